"""Statistics the management server collects while a host is Up (CloudStack 4.21).

Java classes in ``core/src/main/java/com/cloud/agent/api/``. Every command has an answer
class of its own that the MS casts to or tests for (ResourceManagerImpl.getHostStatistics,
VirtualMachineManagerImpl.getVirtualMachineStatistics / getVmDiskStatistics /
getVmNetworkStatistics, UserVmManagerImpl.getVolumeStatistics); all are non-fatal for the
host. Units: host and VM figures in KiB (``*KBs``) and percent; disk and network counters of
the disk/network entries in bytes and requests; volume sizes in bytes.
"""

from __future__ import annotations

from typing import Any, ClassVar

from attrs import frozen

from protocol.messages.enums import StoragePoolType
from protocol.model import Answer, Command, jfield

_API = "com.cloud.agent.api."


@frozen
class HostStatsEntry:
    host_id: int = jfield("hostId", default=0)
    host_vo: dict[str, Any] | None = jfield("hostVo", default=None)  # HostVO: never sent
    entity_type: str | None = jfield("entityType", default=None)  # "host"
    cpu_utilization: float = jfield("cpuUtilization", default=0.0)  # percent
    average_load: float = jfield("averageLoad", default=0.0)  # 1-minute load average
    network_read_kbs: float = jfield("networkReadKBs", default=0.0)
    network_write_kbs: float = jfield("networkWriteKBs", default=0.0)
    total_memory_kbs: float = jfield("totalMemoryKBs", default=0.0)
    free_memory_kbs: float = jfield("freeMemoryKBs", default=0.0)


@frozen
class GetHostStatsCommand(Command):
    JAVA_CLASS: ClassVar[str] = _API + "GetHostStatsCommand"

    host_guid: str | None = jfield("hostGuid", default=None)
    host_name: str | None = jfield("hostName", default=None)
    host_id: int = jfield("hostId", default=0)


@frozen
class GetHostStatsAnswer(Answer):
    JAVA_CLASS: ClassVar[str] = _API + "GetHostStatsAnswer"

    # The Java no-argument constructor creates an empty entry, so it is never absent.
    host_stats: HostStatsEntry | None = jfield("hostStats", factory=HostStatsEntry)


@frozen
class VmStatsEntryBase:
    """The Java superclass of VmStatsEntry; never sent on its own."""

    vm_id: int = jfield("vmId", default=0)
    cpu_utilization: float = jfield("cpuUtilization", default=0.0)  # percent
    network_read_kbs: float = jfield("networkReadKBs", default=0.0)  # KiB in the interval
    network_write_kbs: float = jfield("networkWriteKBs", default=0.0)
    disk_read_ios: float = jfield("diskReadIOs", default=0.0)  # requests in the interval
    disk_write_ios: float = jfield("diskWriteIOs", default=0.0)
    disk_read_kbs: float = jfield("diskReadKBs", default=0.0)  # KiB in the interval
    disk_write_kbs: float = jfield("diskWriteKBs", default=0.0)
    memory_kbs: float = jfield("memoryKBs", default=0.0)
    int_free_memory_kbs: float = jfield("intFreeMemoryKBs", default=0.0)
    target_memory_kbs: float = jfield("targetMemoryKBs", default=0.0)
    num_cpus: int = jfield("numCPUs", default=0)
    entity_type: str | None = jfield("entityType", default=None)  # "vm"


@frozen
class VmStatsEntry(VmStatsEntryBase):
    vm_uuid: str | None = jfield("vmUuid", default=None)


@frozen
class GetVmStatsCommand(Command):
    JAVA_CLASS: ClassVar[str] = _API + "GetVmStatsCommand"

    vm_names: list[str] | None = jfield("vmNames", default=None)
    host_guid: str | None = jfield("hostGuid", default=None)
    host_name: str | None = jfield("hostName", default=None)


@frozen
class GetVmStatsAnswer(Answer):
    JAVA_CLASS: ClassVar[str] = _API + "GetVmStatsAnswer"

    vm_stats_map: dict[str, VmStatsEntry] | None = jfield("vmStatsMap", default=None)


@frozen
class VolumeStatsEntry:
    volume_uuid: str | None = jfield("volumeUuid", default=None)
    physical_size: int = jfield("physicalsize", default=0)  # sic: lower-case s; bytes
    virtual_size: int = jfield("virtualSize", default=0)  # bytes


@frozen
class GetVolumeStatsCommand(Command):
    """``volumeUuids`` are, for KVM, the volumes' paths (file names in the pool)."""

    JAVA_CLASS: ClassVar[str] = _API + "GetVolumeStatsCommand"

    volume_uuids: list[str] | None = jfield("volumeUuids", default=None)
    pool_type: StoragePoolType | None = jfield("poolType", default=None)
    pool_uuid: str | None = jfield("poolUuid", default=None)


@frozen
class GetVolumeStatsAnswer(Answer):
    """Java's constructor always sets result=true; a failure is volumeStats null + details."""

    JAVA_CLASS: ClassVar[str] = _API + "GetVolumeStatsAnswer"

    pool_uuid: str | None = jfield("poolUuid", default=None)
    pool_type: StoragePoolType | None = jfield("poolType", default=None)
    volume_stats: dict[str, VolumeStatsEntry] | None = jfield("volumeStats", default=None)


@frozen
class VmDiskStatsEntry:
    """Cumulative counters of one disk (requests and bytes); ``path`` is the volume path."""

    vm_name: str | None = jfield("vmName", default=None)
    path: str | None = jfield("path", default=None)
    io_read: int = jfield("ioRead", default=0)
    io_write: int = jfield("ioWrite", default=0)
    bytes_write: int = jfield("bytesWrite", default=0)
    bytes_read: int = jfield("bytesRead", default=0)
    delta_io_read: int = jfield("deltaIoRead", default=0)
    delta_io_write: int = jfield("deltaIoWrite", default=0)
    delta_bytes_write: int = jfield("deltaBytesWrite", default=0)
    delta_bytes_read: int = jfield("deltaBytesRead", default=0)


@frozen
class GetVmDiskStatsCommand(Command):
    JAVA_CLASS: ClassVar[str] = _API + "GetVmDiskStatsCommand"

    vm_names: list[str] | None = jfield("vmNames", default=None)
    host_guid: str | None = jfield("hostGuid", default=None)
    host_name: str | None = jfield("hostName", default=None)


@frozen
class GetVmDiskStatsAnswer(Answer):
    JAVA_CLASS: ClassVar[str] = _API + "GetVmDiskStatsAnswer"

    host_name: str | None = jfield("hostName", default=None)
    vm_disk_stats_map: dict[str, list[VmDiskStatsEntry]] | None = jfield(
        "vmDiskStatsMap", default=None
    )


@frozen
class VmNetworkStatsEntry:
    """Cumulative bytes of one interface."""

    vm_name: str | None = jfield("vmName", default=None)
    mac_address: str | None = jfield("macAddress", default=None)
    bytes_sent: int = jfield("bytesSent", default=0)
    bytes_received: int = jfield("bytesReceived", default=0)


@frozen
class GetVmNetworkStatsCommand(Command):
    JAVA_CLASS: ClassVar[str] = _API + "GetVmNetworkStatsCommand"

    vm_names: list[str] | None = jfield("vmNames", default=None)
    host_guid: str | None = jfield("hostGuid", default=None)
    host_name: str | None = jfield("hostName", default=None)


@frozen
class GetVmNetworkStatsAnswer(Answer):
    JAVA_CLASS: ClassVar[str] = _API + "GetVmNetworkStatsAnswer"

    host_name: str | None = jfield("hostName", default=None)
    vm_network_stats_map: dict[str, list[VmNetworkStatsEntry]] | None = jfield(
        "vmNetworkStatsMap", default=None
    )
