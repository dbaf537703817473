"""The VirtualMachineTO a 4.21 MS sends for the lab's VM: the marker guest booting from a
volume on the lab's shared pool (SharedMountPoint), one NIC on cloudbr0 (the lab zone's
guest traffic label), VNC with a password. For StartCommand and PrepareForMigration; and the
CopyCommand / DeleteCommand that make and expunge its ROOT volume from the lab template."""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

import attrs

from lab.bootdisk import VIRTUAL_SIZE
from lab.guest import MARKER
from lab.netns import LabError
from lab.storage import SHARED_POOL_PATH, SHARED_POOL_UUID, TEMPLATE_UUID
from protocol.messages.data_to import PrimaryDataStoreTO, TemplateObjectTO, VolumeObjectTO
from protocol.messages.enums import ImageFormat, ProvisioningType, StoragePoolType, VolumeType
from protocol.messages.volumes import CopyCommand, DeleteCommand

if TYPE_CHECKING:
    from lab.hosts import LabHost

MiB = 1 << 20


def vm_to(name: str, volume: str) -> dict[str, Any]:
    """The TO of VM ``name`` whose ROOT volume is the file ``volume`` on the shared pool."""
    return {
        "id": 77, "name": name, "type": "User", "cpus": 1, "minSpeed": 500, "maxSpeed": 500,
        "minRam": 128 * MiB, "maxRam": 128 * MiB, "arch": "x86_64", "os": "Other (64-bit)",
        "platformEmulator": "Other PV (64-bit)", "bootArgs": "", "enableHA": False,
        "limitCpuUse": False, "enableDynamicallyScaleVm": False, "vncPassword": "lab-vnc-secret",
        "uuid": "0c8f4c5e-0000-4000-8000-00000000a077", "enterHardwareSetup": False,
        "disks": [
            {"data": {"org.apache.cloudstack.storage.to.VolumeObjectTO": {
                "uuid": volume, "volumeType": "ROOT",
                "dataStore": {"org.apache.cloudstack.storage.to.PrimaryDataStoreTO": {
                    "uuid": SHARED_POOL_UUID, "name": "lab-primary", "id": 1,
                    "poolType": "SharedMountPoint", "host": "localhost", "path": SHARED_POOL_PATH,
                    "port": 0, "details": {}, "isManaged": False}},
                "name": "ROOT-77", "size": VIRTUAL_SIZE, "path": volume, "volumeId": 77,
                "vmName": name, "accountId": 2, "format": "QCOW2", "provisioningType": "THIN",
                "poolId": 1, "id": 77, "deviceId": 0, "hypervisorType": "KVM"}},
             "diskSeq": 0, "path": volume, "type": "ROOT", "details": {"managed": "false"}},
            {"data": {"org.apache.cloudstack.storage.to.TemplateObjectTO": {
                "id": 0, "format": "ISO", "accountId": 0, "hvm": False, "bootable": False}},
             "diskSeq": 3, "type": "ISO"},
        ],
        "nics": [{
            # No rate: this kernel has no sfq/ingress qdiscs (tests of the XML cover rates).
            "deviceId": 0, "networkRateMbps": 0, "defaultNic": True, "pxeDisable": False,
            "nicUuid": "f3188e9f-0000-4000-8000-00000000a077", "dpdkEnabled": False, "mtu": 1500,
            "networkId": 204, "uuid": "e754f4e2-0000-4000-8000-00000000a077", "ip": "10.1.1.77",
            "netmask": "255.255.255.0", "gateway": "10.1.1.1", "mac": "02:01:00:cc:00:77",
            "broadcastType": "Native", "type": "Guest", "broadcastUri": "vlan://untagged",
            "securityGroupEnabled": False, "name": "cloudbr0"}],
        "configDriveLocation": "SECONDARY", "guestOsDetails": {}, "extraConfig": {},
    }  # fmt: skip


STORE = PrimaryDataStoreTO(
    uuid=SHARED_POOL_UUID,
    name="lab-primary",
    id=1,
    pool_type=StoragePoolType.SHARED_MOUNT_POINT,
    host="localhost",
    path=SHARED_POOL_PATH,
    url=f"SharedMountPoint://localhost{SHARED_POOL_PATH}/?ROLE=Primary&STOREUUID={SHARED_POOL_UUID}",
    details={},
)


def shared_volume(
    volume: str,
    vtype: VolumeType,
    size: int,
    *,
    path: str | None = None,
    vm: str | None = None,
    number: int = 77,
) -> VolumeObjectTO:
    """Volume ``volume`` on the shared pool as the MS describes it (``number``: its id)."""
    return VolumeObjectTO(
        uuid=volume,
        volume_type=vtype,
        data_store=STORE,
        name=f"{vtype.value}-{number}",
        size=size,
        path=path,
        volume_id=number,
        vm_name=vm,
        account_id=2,
        format=ImageFormat.QCOW2,
        provisioning_type=ProvisioningType.THIN,
        pool_id=1,
        id=number,
    )


def root_volume(vm: str, volume: str) -> VolumeObjectTO:
    """The ROOT volume ``volume`` of VM ``vm`` on the shared pool, as the MS names it."""
    return shared_volume(volume, VolumeType.ROOT, VIRTUAL_SIZE, path=volume, vm=vm)


def clone_to(dest: VolumeObjectTO) -> CopyCommand:
    """What the MS sends to make ``dest`` from the template on the shared pool."""
    return CopyCommand(
        src_to=TemplateObjectTO(
            path=TEMPLATE_UUID,
            uuid="5b8d8a1c-0000-4000-8000-0000000000c9",
            id=201,
            format=ImageFormat.QCOW2,
            image_data_store=STORE,
            name="201-2-bootdisk",
            hvm=True,
        ),
        dest_to=dest,
        wait=0,  # as the MS sends a clone
    )


def clone_command(vm: str, volume: str) -> CopyCommand:
    """What the MS sends to make ``vm``'s ROOT volume from the template on the shared pool."""
    return clone_to(attrs.evolve(root_volume(vm, volume), path=None))


def delete_command(vm: str, volume: str) -> DeleteCommand:
    """What the MS sends to expunge the volume."""
    return DeleteCommand(data=root_volume(vm, volume))


# Near the end of the guest's 2-98 MiB fill (32-byte aligned from 2 MiB): filled once it
# holds the marker. Read through QEMU's monitor: a VM started by the agent logs no serial.
_PROBE = 0x5F00000


def ram_filled(host: LabHost, vm: str) -> bool:
    out = host.virsh("qemu-monitor-command", vm, "--hmp", f"xp /{len(MARKER)}xb {_PROBE:#x}")
    found = bytes(int(t, 16) for t in re.findall(r"0x([0-9a-fA-F]{2})\b", out))
    return found == MARKER


def wait_ram_filled(host: LabHost, vm: str, timeout: float = 120) -> float:
    """Until ``vm`` (running on ``host``) has filled its RAM with the marker; seconds."""
    t0 = time.monotonic()
    while not ram_filled(host, vm):
        if time.monotonic() - t0 > timeout:
            raise LabError(f"{vm} on {host.name}: RAM not filled within {timeout} s")
        time.sleep(0.5)
    return time.monotonic() - t0
