"""The statistics readers of a 4.21 management server; all non-fatal for the host.

Sources (CloudStack 4.21.0.0): ``server/src/main/java/com/cloud/resource/ResourceManagerImpl.java``
``getHostStatistics``; ``engine/orchestration/src/main/java/com/cloud/vm/
VirtualMachineManagerImpl.java`` ``getVirtualMachineStatistics``, ``getVmDiskStatistics``,
``getVmNetworkStatistics`` (called by ``server/.../server/StatsCollector.java``, whose
collectors log any exception and skip the host for the cycle);
``server/src/main/java/com/cloud/vm/UserVmManagerImpl.java`` ``getVolumeStatistics``;
``StatsCollector.StorageCollector`` (GetStorageStatsCommand, cast to StorageStats).
"""

from __future__ import annotations

from typing import Any

from lab.ms_side.verdict import MsVerdict, class_cast, no_answer, result_of
from protocol.codec import to_json
from protocol.messages.stats import (
    GetHostStatsAnswer,
    GetVmDiskStatsAnswer,
    GetVmNetworkStatsAnswer,
    GetVmStatsAnswer,
    GetVolumeStatsAnswer,
)
from protocol.messages.storage import GetStorageStatsAnswer
from protocol.model import Message, UnsupportedAnswer

SKIPPED = "no statistics for this host this cycle"


def host_stats(answer: Message | None) -> MsVerdict:
    """ResourceManagerImpl.getHostStatistics: Unsupported -> null; only a GetHostStatsAnswer
    gives statistics (``instanceof``, no cast)."""
    if isinstance(answer, UnsupportedAnswer):
        return MsVerdict(False, f"UnsupportedAnswer: {SKIPPED}")
    if answer is None:
        return no_answer(SKIPPED)
    if not result_of(answer):
        return MsVerdict(False, f"'Unable to obtain host statistics': {SKIPPED}")
    if not isinstance(answer, GetHostStatsAnswer) or answer.host_stats is None:
        return MsVerdict(False, f"not a GetHostStatsAnswer with hostStats: {SKIPPED}")
    return MsVerdict(True, "host statistics stored", read=to_json(answer.host_stats))


def _per_vm(
    answer: Message | None, cls: type[Any], field: str, what: str
) -> tuple[MsVerdict | None, Any]:
    """The shared shape of the three VM collectors: null/false -> empty; then a cast."""
    if answer is None:
        return no_answer(f"'Unable to obtain VM {what}statistics.'"), None
    if not result_of(answer):
        return MsVerdict(False, f"'Unable to obtain VM {what}statistics.'"), None
    if not isinstance(answer, cls):
        return MsVerdict(False, f"{class_cast(answer, cls)}: {SKIPPED}"), None
    value = getattr(answer, field)
    if value is None:
        return MsVerdict(False, f"the map is null: 'Unable to obtain VM {what}statistics.'"), None
    return None, value


def vm_stats(answer: Message | None) -> MsVerdict:
    """VirtualMachineManagerImpl.getVirtualMachineStatistics: entries by instance name."""
    failed, entries = _per_vm(answer, GetVmStatsAnswer, "vm_stats_map", "")
    if failed:
        return failed
    read = {name: to_json(entry) for name, entry in entries.items()}
    return MsVerdict(True, "VM statistics stored in vm_stats", read=read)


def vm_disk_stats(answer: Message | None) -> MsVerdict:
    """VirtualMachineManagerImpl.getVmDiskStatistics (UserVmManagerImpl's collection before a
    stop or migration casts the same way, inside a try that drops the failure)."""
    failed, entries = _per_vm(answer, GetVmDiskStatsAnswer, "vm_disk_stats_map", "disk ")
    if failed:
        return failed
    read = {name: [to_json(e) for e in disks] for name, disks in entries.items()}
    return MsVerdict(True, "counters merged into vm_disk_statistics", read=read)


def vm_network_stats(answer: Message | None) -> MsVerdict:
    """VirtualMachineManagerImpl.getVmNetworkStatistics."""
    failed, entries = _per_vm(answer, GetVmNetworkStatsAnswer, "vm_network_stats_map", "network ")
    if failed:
        return failed
    read = {name: [to_json(e) for e in nics] for name, nics in entries.items()}
    return MsVerdict(True, "counters merged into user_vm network statistics", read=read)


def volume_stats(answer: Message | None) -> MsVerdict:
    """UserVmManagerImpl.getVolumeStatistics: ``instanceof GetVolumeStatsAnswer`` and a
    non-null map; ``result`` is not read (Java's constructors always set it true)."""
    if not isinstance(answer, GetVolumeStatsAnswer):
        return MsVerdict(False, f"not a GetVolumeStatsAnswer: {SKIPPED}")
    if answer.volume_stats is None:
        return MsVerdict(False, f"volumeStats is null ({answer.details}): {SKIPPED}")
    read = {uuid: to_json(entry) for uuid, entry in answer.volume_stats.items()}
    return MsVerdict(True, "volume sizes stored", read=read)


def storage_stats(answer: Message | None) -> MsVerdict:
    """StatsCollector.StorageCollector: result true -> ``(StorageStats) answer``; a
    capacity of 0 or less is not stored ('Not setting capacity bytes')."""
    if answer is None or not result_of(answer):
        return MsVerdict(False, f"no answer or result false: {SKIPPED}")
    if not isinstance(answer, GetStorageStatsAnswer):  # the one StorageStats answer
        return MsVerdict(
            False, f"{class_cast(answer, GetStorageStatsAnswer)}: 'Unable to get stats'"
        )
    read = {"capacityBytes": answer.capacity_bytes, "usedBytes": answer.used_bytes}
    if answer.capacity_bytes <= 0:
        return MsVerdict(False, "'Not setting capacity bytes': capacity <= 0", read=read)
    return MsVerdict(True, "pool capacity and used bytes updated", read=read)
