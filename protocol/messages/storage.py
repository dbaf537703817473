"""Primary storage pools: attach, detach, capacity, local pools at startup (CloudStack 4.21).

Java classes in ``core/src/main/java/com/cloud/agent/api/`` (StoragePoolInfo in
``api/src/main/java/com/cloud/agent/api/``, TemplateProp in
``api/src/main/java/com/cloud/storage/template/``, StorageNfsVersionCommand in
``core/src/main/java/com/cloud/agent/api/storage/``). Answers the MS expects:

* ModifyStoragePoolCommand -> **ModifyStoragePoolAnswer** with ``poolInfo`` (DefaultHostListener
  casts and reads ``poolInfo.localPath``, capacity and available bytes);
* DeleteStoragePoolCommand -> a plain :class:`~protocol.model.Answer`;
* GetStorageStatsCommand -> **GetStorageStatsAnswer** (StatsCollector casts to StorageStats).
"""

from __future__ import annotations

from typing import ClassVar

from attrs import frozen

from protocol.messages.data_to import DataStoreTO
from protocol.messages.enums import StoragePoolType, StorageResourceType
from protocol.messages.host import HostType, StartupCommand
from protocol.messages.to import StorageFilerTO
from protocol.model import Answer, Command, jfield

_API = "com.cloud.agent.api."


@frozen
class StoragePoolInfo:
    uuid: str | None = jfield("uuid", default=None)
    host: str | None = jfield("host", default=None)
    local_path: str | None = jfield("localPath", default=None)  # the MS stores it: non-null
    host_path: str | None = jfield("hostPath", default=None)
    pool_type: StoragePoolType | None = jfield("poolType", default=None)
    capacity_bytes: int = jfield("capacityBytes", default=0)
    available_bytes: int = jfield("availableBytes", default=0)
    name: str | None = jfield("name", default=None)
    details: dict[str, str] | None = jfield("details", default=None)


@frozen
class TemplateProp:
    template_name: str | None = jfield("templateName", default=None)
    install_path: str | None = jfield("installPath", default=None)
    size: int = jfield("size", default=0)
    physical_size: int = jfield("physicalSize", default=0)
    id: int = jfield("id", default=0)
    is_public: bool = jfield("isPublic", default=False)
    is_corrupted: bool = jfield("isCorrupted", default=False)


@frozen
class ModifyStoragePoolCommand(Command):
    JAVA_CLASS: ClassVar[str] = _API + "ModifyStoragePoolCommand"

    add: bool = jfield("add", default=False)  # false: remove the pool
    pool: StorageFilerTO | None = jfield("pool", default=None)
    # "/mnt//<uuid of host+path>": echoed in poolInfo.localPath, not where KVM mounts.
    local_path: str | None = jfield("localPath", default=None)
    storage_path: str | None = jfield("storagePath", default=None)
    # Pool details (nfsmountopts; plugin credentials for managed storage).
    details: dict[str, str] | None = jfield("details", default=None, secret=True)


@frozen
class ModifyStoragePoolAnswer(Answer):
    JAVA_CLASS: ClassVar[str] = _API + "ModifyStoragePoolAnswer"

    pool_info: StoragePoolInfo | None = jfield("poolInfo", default=None)
    template_info: dict[str, TemplateProp] | None = jfield("templateInfo", default=None)
    local_datastore_name: str | None = jfield("localDatastoreName", default=None)  # VMware
    pool_type: str | None = jfield("poolType", default=None)  # a String here, not the enum
    datastore_cluster_children: list[ModifyStoragePoolAnswer] | None = jfield(
        "datastoreClusterChildren", factory=list
    )


@frozen
class DeleteStoragePoolCommand(Command):
    JAVA_CLASS: ClassVar[str] = _API + "DeleteStoragePoolCommand"

    pool: StorageFilerTO | None = jfield("_pool", default=None)
    local_path: str | None = jfield("_localPath", default=None)
    remove_datastore: bool = jfield("_removeDatastore", default=False)
    details: dict[str, str] | None = jfield("_details", default=None, secret=True)


@frozen
class StorageNfsVersionCommand(Command):
    """The Java superclass of GetStorageStatsCommand; not sent on its own."""

    JAVA_CLASS: ClassVar[str] = _API + "storage.StorageNfsVersionCommand"

    nfs_version: str | None = jfield("nfsVersion", default=None)


@frozen
class GetStorageStatsCommand(StorageNfsVersionCommand):
    """For a primary pool the MS sets ``id`` (pool uuid), ``pooltype`` and ``localPath``."""

    JAVA_CLASS: ClassVar[str] = _API + "GetStorageStatsCommand"

    id: str | None = jfield("id", default=None)
    local_path: str | None = jfield("localPath", default=None)
    pool_type: StoragePoolType | None = jfield("pooltype", default=None)  # sic: lower-case t
    sec_url: str | None = jfield("secUrl", default=None)
    store: DataStoreTO | None = jfield("store", default=None)


@frozen
class GetStorageStatsAnswer(Answer):
    JAVA_CLASS: ClassVar[str] = _API + "GetStorageStatsAnswer"

    used_bytes: int = jfield("usedBytes", default=0)
    capacity_bytes: int = jfield("capacityBytes", default=0)
    capacity_iops: int | None = jfield("capacityIops", default=None)
    used_iops: int | None = jfield("usedIops", default=None)


@frozen
class StartupStorageCommand(StartupCommand):
    """A local pool, sent in the same request as the StartupRoutingCommand."""

    JAVA_CLASS: ClassVar[str] = _API + "StartupStorageCommand"
    HOST_TYPE: ClassVar[HostType] = HostType.STORAGE

    parent: str | None = jfield("parent", default=None)
    template_info: dict[str, TemplateProp] | None = jfield("templateInfo", default=None)
    total_size: int = jfield("totalSize", default=0)
    pool_info: StoragePoolInfo | None = jfield("poolInfo", default=None)
    resource_type: StorageResourceType | None = jfield("resourceType", default=None)
    fs_type: StoragePoolType | None = jfield("fsType", default=None)
    host_details: dict[str, str] | None = jfield("hostDetails", factory=dict)
    nfs_share: str | None = jfield("nfsShare", default=None)
