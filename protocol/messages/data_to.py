"""The storage transfer objects behind Java's ``DataTO`` and ``DataStoreTO`` interfaces.

A field declared ``DataTO`` / ``DataStoreTO`` travels as ``{"<class>": {...}}`` (see
:mod:`protocol.jtypes`): CopyCommand's ``srcTO``/``destTO``/``cacheTO``, a DiskTO's
``data``, a VolumeObjectTO's ``dataStore``, a TemplateObjectTO's ``imageDataStore``,
CopyCmdAnswer's ``newData``... Field lists as in CloudStack 4.21, Gson order (subclass
fields first): ``core/src/main/java/org/apache/cloudstack/storage/to/`` (VolumeObjectTO,
TemplateObjectTO, PrimaryDataStoreTO, DownloadableObjectTO) and
``api/src/main/java/com/cloud/agent/api/to/NfsTO.java``. Java primitives (long, int,
boolean) are always on the wire and default to 0/false here; boxed ones may be absent.
"""

from __future__ import annotations

from typing import Any, ClassVar

from attrs import frozen

from protocol.jtypes import JavaInterface, RawImplementation
from protocol.messages.enums import (
    DataStoreRole,
    DiskCacheMode,
    HypervisorType,
    ImageFormat,
    ProvisioningType,
    StoragePoolType,
    VolumeType,
)
from protocol.model import jfield

_TO = "org.apache.cloudstack.storage.to."


class DataTO(JavaInterface, root=True):
    """``com.cloud.agent.api.to.DataTO``: a volume, template or snapshot on some store."""

    __slots__ = ()


class DataStoreTO(JavaInterface, root=True):
    """``com.cloud.agent.api.to.DataStoreTO``: a primary pool or an image store."""

    __slots__ = ()


@frozen
class UnknownDataTO(RawImplementation, DataTO):
    """A DataTO class not modelled here (e.g. SnapshotObjectTO), kept as it came."""


@frozen
class UnknownDataStoreTO(RawImplementation, DataStoreTO):
    """A DataStoreTO class not modelled here (e.g. S3TO, SwiftTO), kept as it came."""


@frozen
class PrimaryDataStoreTO(DataStoreTO):
    JAVA_CLASS: ClassVar[str] = _TO + "PrimaryDataStoreTO"

    uuid: str | None = jfield("uuid", default=None)  # the pool's uuid = libvirt pool name
    name: str | None = jfield("name", default=None)
    type: str | None = jfield("type", default=None)
    id: int = jfield("id", default=0)
    pool_type: StoragePoolType | None = jfield("poolType", default=None)
    host: str | None = jfield("host", default=None)
    path: str | None = jfield("path", default=None)
    port: int = jfield("port", default=0)
    url: str | None = jfield("url", default=None)
    # Pool details: nfsmountopts, and for managed storage CHAP or gateway credentials.
    details: dict[str, str] | None = jfield("details", default=None, secret=True)
    full_clone_flag: bool | None = jfield("fullCloneFlag", default=None)
    disk_provisioning_strictness_flag: bool | None = jfield(
        "diskProvisioningStrictnessFlag", default=None
    )
    is_managed: bool = jfield("isManaged", default=False)
    parent_pool_type: StoragePoolType | None = jfield("parentPoolType", default=None)


@frozen
class NfsTO(DataStoreTO):
    """An NFS image store (secondary storage): ``_url`` is ``nfs://<host>/<export>``."""

    JAVA_CLASS: ClassVar[str] = "com.cloud.agent.api.to.NfsTO"

    url: str | None = jfield("_url", default=None)
    role: DataStoreRole | None = jfield("_role", default=None)
    uuid: str | None = jfield("uuid", default=None)
    nfs_version: str | None = jfield("nfsVersion", default=None)


@frozen
class DownloadableObjectTO:
    """The Java superclass of VolumeObjectTO and TemplateObjectTO; never sent on its own."""

    follow_redirects: bool = jfield("followRedirects", default=False)


@frozen
class VolumeObjectTO(DownloadableObjectTO, DataTO):
    JAVA_CLASS: ClassVar[str] = _TO + "VolumeObjectTO"

    uuid: str | None = jfield("uuid", default=None)  # the file name of a new file volume
    volume_type: VolumeType | None = jfield("volumeType", default=None)
    data_store: DataStoreTO | None = jfield("dataStore", default=None)
    name: str | None = jfield("name", default=None)
    size: int | None = jfield("size", default=None)  # bytes, virtual size
    usable_size: int | None = jfield("usableSize", default=None)
    path: str | None = jfield("path", default=None)  # file name on the pool
    volume_id: int | None = jfield("volumeId", default=None)
    vm_name: str | None = jfield("vmName", default=None)
    account_id: int = jfield("accountId", default=0)
    chain_info: str | None = jfield("chainInfo", default=None)
    format: ImageFormat | None = jfield("format", default=None)
    provisioning_type: ProvisioningType | None = jfield("provisioningType", default=None)
    pool_id: int | None = jfield("poolId", default=None)
    id: int = jfield("id", default=0)
    device_id: int | None = jfield("deviceId", default=None)
    # I/O limits: bytes/s, IOPS; *MaxLength in seconds.
    bytes_read_rate: int | None = jfield("bytesReadRate", default=None)
    bytes_read_rate_max: int | None = jfield("bytesReadRateMax", default=None)
    bytes_read_rate_max_length: int | None = jfield("bytesReadRateMaxLength", default=None)
    bytes_write_rate: int | None = jfield("bytesWriteRate", default=None)
    bytes_write_rate_max: int | None = jfield("bytesWriteRateMax", default=None)
    bytes_write_rate_max_length: int | None = jfield("bytesWriteRateMaxLength", default=None)
    iops_read_rate: int | None = jfield("iopsReadRate", default=None)
    iops_read_rate_max: int | None = jfield("iopsReadRateMax", default=None)
    iops_read_rate_max_length: int | None = jfield("iopsReadRateMaxLength", default=None)
    iops_write_rate: int | None = jfield("iopsWriteRate", default=None)
    iops_write_rate_max: int | None = jfield("iopsWriteRateMax", default=None)
    iops_write_rate_max_length: int | None = jfield("iopsWriteRateMaxLength", default=None)
    cache_mode: DiskCacheMode | None = jfield("cacheMode", default=None)
    hypervisor_type: HypervisorType | None = jfield("hypervisorType", default=None)
    migration_options: dict[str, Any] | None = jfield("migrationOptions", default=None)  # raw
    direct_download: bool = jfield("directDownload", default=False)
    data_store_uuid: str | None = jfield("dataStoreUuid", default=None)
    deploy_as_is: bool = jfield("deployAsIs", default=False)
    updated_data_store_uuid: str | None = jfield("updatedDataStoreUUID", default=None)
    vsphere_storage_policy_id: str | None = jfield("vSphereStoragePolicyId", default=None)
    # LUKS passphrase: a JSON array of signed bytes.
    passphrase: list[int] | None = jfield("passphrase", default=None, secret=True)
    encrypt_format: str | None = jfield("encryptFormat", default=None)
    checkpoint_paths: list[str] | None = jfield("checkpointPaths", default=None)
    checkpoint_image_store_urls: list[str] | None = jfield("checkpointImageStoreUrls", default=None)


@frozen
class TemplateObjectTO(DownloadableObjectTO, DataTO):
    """A template or ISO; with no ISO attached, the ISO slot holds an empty one."""

    JAVA_CLASS: ClassVar[str] = _TO + "TemplateObjectTO"

    path: str | None = jfield("path", default=None)
    orig_url: str | None = jfield("origUrl", default=None)
    uuid: str | None = jfield("uuid", default=None)
    id: int = jfield("id", default=0)
    format: ImageFormat | None = jfield("format", default=None)
    account_id: int = jfield("accountId", default=0)
    checksum: str | None = jfield("checksum", default=None)
    hvm: bool = jfield("hvm", default=False)
    display_text: str | None = jfield("displayText", default=None)
    image_data_store: DataStoreTO | None = jfield("imageDataStore", default=None)
    name: str | None = jfield("name", default=None)
    guest_os_type: str | None = jfield("guestOsType", default=None)
    size: int | None = jfield("size", default=None)
    physical_size: int | None = jfield("physicalSize", default=None)
    hypervisor_type: HypervisorType | None = jfield("hypervisorType", default=None)
    bootable: bool = jfield("bootable", default=False)
    unique_name: str | None = jfield("uniqueName", default=None)
    direct_download: bool = jfield("directDownload", default=False)
    deploy_as_is: bool = jfield("deployAsIs", default=False)
    deploy_as_is_configuration: str | None = jfield("deployAsIsConfiguration", default=None)

    @property
    def data_store(self) -> DataStoreTO | None:
        """Java's ``getDataStore()`` of a template is its ``imageDataStore``."""
        return self.image_data_store
