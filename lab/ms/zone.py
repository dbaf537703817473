"""The zone a lab management server runs: its physical networks, its cluster's shared
primary pools, the global settings its connect listeners send.

A real MS reads these from its database; the lab's are values. :func:`lab_zone` is the
two-host lab's zone: the KVM traffic labels name the hosts' bridge ``cloudbr0`` and the
cluster has one SharedMountPoint pool (:mod:`lab.storage`), at the same path on both hosts.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any, Final

import attrs
from attrs import field, frozen

from protocol.messages.enums import StoragePoolType
from protocol.messages.network import PhysicalNetworkSetupInfo
from protocol.messages.to import StorageFilerTO

# ModifyStoragePoolCommand.LOCAL_PATH_PREFIX: the MS's localPath is "/mnt/" + "/" + uuid.
LOCAL_PATH_PREFIX: Final = "/mnt/"
# What SetHostParamsListener sends to a KVM host (4.21 defaults of the global settings).
DEFAULT_HOST_PARAMS: Final = {
    "router.aggregation.command.each.timeout": "600",
    "migratewait": "3600",
    "tungsten.plugin.enable": "false",
    "reconcile.commands.enabled": "false",
}
LAB_BRIDGE: Final = "cloudbr0"


def name_uuid_from_bytes(data: bytes) -> str:
    """Java's ``UUID.nameUUIDFromBytes``: an MD5 (version 3) UUID with no namespace."""
    digest = bytearray(hashlib.md5(data).digest())  # an identifier, not security
    digest[6] = (digest[6] & 0x0F) | 0x30
    digest[8] = (digest[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(digest)))


@frozen
class PhysicalNetwork:
    """One physical network of the zone and its KVM traffic labels (None: not set)."""

    id: int = 200
    management: str | None = None
    public: str | None = None
    guest: str | None = None
    storage: str | None = None
    mgmt_vlan: str | None = None

    def setup_info(self) -> PhysicalNetworkSetupInfo:
        """NetworkOrchestrator.processConnect's entry for this network."""
        return PhysicalNetworkSetupInfo(
            physical_network_id=self.id,
            private_network_name=self.management,
            public_network_name=self.public,
            guest_network_name=self.guest,
            storage_network_name=self.storage,
            mgmt_vlan=self.mgmt_vlan,
        )


@frozen
class SharedPool:
    """A shared primary pool of the cluster: every host that connects must attach it."""

    uuid: str
    path: str
    id: int = 1
    name: str = "primary"
    host: str = "localhost"  # what CloudStack keeps for a SharedMountPoint pool
    type: StoragePoolType = StoragePoolType.SHARED_MOUNT_POINT
    details: dict[str, str] = field(factory=dict)

    def filer(self) -> StorageFilerTO:
        return StorageFilerTO(
            id=self.id, uuid=self.uuid, host=self.host, path=self.path, port=0, type=self.type
        )

    @property
    def local_path(self) -> str:
        """The MS's ``localPath`` (ModifyStoragePoolCommand's constructor): not where KVM
        mounts; the agent echoes it and the MS stores it with ``//`` made ``/``."""
        return LOCAL_PATH_PREFIX + "/" + name_uuid_from_bytes((self.host + self.path).encode())


@frozen
class Zone:
    """What the connect listeners and the statistics collector work from.

    ``physical_networks`` and ``shared_pools`` empty and ``listeners`` false: a bare MS that
    only sends the ReadyCommands (the session tests' MS). ``stats_interval`` (seconds, 0 =
    off) stands for host/vm/storage.stats.interval (60 s in a real MS).
    """

    id: int = 1
    name: str = "default"  # the agent's default ``zone``
    pod_id: int = 1
    cluster_id: int = 1
    listeners: bool = True
    physical_networks: tuple[PhysicalNetwork, ...] = (PhysicalNetwork(),)
    shared_pools: tuple[SharedPool, ...] = ()
    host_params: dict[str, str] = field(factory=lambda: dict(DEFAULT_HOST_PARAMS))
    ssh_public_key: str | None = None
    ssh_private_key: str | None = field(default=None, repr=False)
    stats_interval: float = 0.0

    def evolve(self, **changes: Any) -> Zone:
        return attrs.evolve(self, **changes)

    def pool(self, pool_uuid: str) -> SharedPool | None:
        return next((p for p in self.shared_pools if p.uuid == pool_uuid), None)

    @property
    def ha_storage(self) -> bool:
        """KVMInvestigator investigates only when a pool's driver supports HA: in 4.21 the
        default driver says so for NFS only (CloudStackPrimaryDataStoreDriverImpl)."""
        return any(p.type is StoragePoolType.NETWORK_FILESYSTEM for p in self.shared_pools)


BARE: Final = Zone(listeners=False, physical_networks=())


def lab_zone(*, stats_interval: float = 0.0, bridge: str = LAB_BRIDGE) -> Zone:
    """The two-host lab's zone: management, guest and public traffic on ``bridge``, the
    SharedMountPoint pool of :mod:`lab.storage`."""
    from lab.storage import SHARED_POOL_PATH, SHARED_POOL_UUID

    return Zone(
        physical_networks=(PhysicalNetwork(management=bridge, public=bridge, guest=bridge),),
        shared_pools=(SharedPool(uuid=SHARED_POOL_UUID, path=SHARED_POOL_PATH),),
        stats_interval=stats_interval,
    )
