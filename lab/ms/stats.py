"""The statistics cycle of a 4.21 management server (``StatsCollector``), at a lab interval.

Four collectors, each on its own fixed-delay schedule as in StatsCollector: host statistics
(``HostCollector`` -> ``ResourceManagerImpl.getHostStatistics``) and VM statistics
(``VmStatsCollector`` -> ``VirtualMachineManagerImpl.getVirtualMachineStatistics``, only
for a host with VMs) for every Up host; volume statistics (``VolumeStatsTask`` ->
``UserVmManagerImpl.getVolumeStatistics``: each Up host of the pool's cluster, for the
volumes of the VMs it runs); storage statistics (``StorageCollector``: one random Up host
of each pool, ``StorageManager.sendToPool``). Every answer goes through the MS's reader
(:mod:`lab.ms_side.stats`); nothing here is fatal for a host, as in StatsCollector.
"""

from __future__ import annotations

import collections
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

import structlog
import trio
from attrs import define, field, frozen
from structlog.typing import FilteringBoundLogger

from lab.db import HostRecord
from lab.ms.zone import Zone
from lab.ms_side import verdict_for
from lab.ms_side.verdict import MsVerdict
from protocol.messages.stats import GetHostStatsCommand, GetVmStatsCommand, GetVolumeStatsCommand
from protocol.messages.storage import GetStorageStatsCommand
from protocol.model import Command, Message

STATS_TIMEOUT: Final = 60  # stats.timeout (ms in the MS: 60000), GetVolumeStats' wait
_log: FilteringBoundLogger = structlog.get_logger("lab.ms.stats")


class StatsServer(Protocol):
    @property
    def zone(self) -> Zone: ...

    def up_hosts(self) -> list[HostRecord]: ...

    def vm_names(self, guid: str) -> list[str]:
        """The VMs the MS believes run on the host (its last VM report)."""
        ...

    def pool_hosts(self, pool_uuid: str) -> list[str]:
        """Guids of the Up hosts attached to the pool (storage_pool_host_ref)."""
        ...

    def volumes(self, pool_uuid: str) -> dict[str, str]:
        """The pool's volumes the MS tracks: path -> instance name of the VM using it."""
        ...

    def easy_send_host(self, host_id: int, command: Command) -> Awaitable[Message | None]: ...


@frozen
class Sample:
    """One statistics command: which host, how long its answer took, the MS's verdict."""

    at: float  # trio time the command left
    wall: float  # the same, as time.time() (for callers in other processes)
    guid: str
    command: str
    seconds: float
    verdict: MsVerdict


@define
class StatsCollector:
    server: StatsServer
    interval: float
    host_stats: dict[str, dict[str, Any]] = field(factory=dict)  # guid -> HostStatsEntry
    vm_stats: dict[str, dict[str, Any]] = field(factory=dict)  # instance name -> VmStatsEntry
    volume_stats: dict[str, dict[str, Any]] = field(factory=dict)  # volume -> VolumeStatsEntry
    pool_stats: dict[str, dict[str, Any]] = field(factory=dict)  # pool uuid -> capacity, used
    samples: collections.deque[Sample] = field(factory=lambda: collections.deque(maxlen=20000))
    cycles: dict[str, int] = field(factory=dict)  # collector -> cycles completed

    async def run(self) -> None:
        collectors: dict[str, Callable[[], Awaitable[None]]] = {
            "host": self.collect_hosts,
            "vm": self.collect_vms,
            "volume": self.collect_volumes,
            "storage": self.collect_storage,
        }
        async with trio.open_nursery() as nursery:
            for name, collect in collectors.items():
                nursery.start_soon(self._every, name, collect)

    async def _every(self, name: str, collect: Callable[[], Awaitable[None]]) -> None:
        while True:  # scheduleWithFixedDelay
            await trio.sleep(self.interval)
            try:
                await collect()
            except Exception:  # "Error trying to retrieve ... stats": the next cycle runs
                _log.exception("statistics collector failed", collector=name)
            self.cycles[name] = self.cycles.get(name, 0) + 1

    async def _send(self, host: HostRecord, command: Command) -> MsVerdict:
        started = trio.current_time()
        answer = await self.server.easy_send_host(host.id, command)
        verdict = verdict_for(command, answer)
        name = command.java_class.rsplit(".", 1)[-1]
        took = trio.current_time() - started
        self.samples.append(Sample(started, time.time() - took, host.guid, name, took, verdict))
        if not verdict.ok:
            _log.warning("no statistics", host=host.guid, command=name, reason=verdict.reason)
        return verdict

    async def collect_hosts(self) -> None:
        for host in self.server.up_hosts():
            command = GetHostStatsCommand(host_guid=host.guid, host_name=host.name, host_id=host.id)
            verdict = await self._send(host, command)
            if verdict.ok:
                self.host_stats[host.guid] = dict(verdict.read)

    async def collect_vms(self) -> None:
        for host in self.server.up_hosts():
            names = self.server.vm_names(host.guid)
            if not names:
                continue  # getVirtualMachineStatistics sends nothing for a host without VMs
            command = GetVmStatsCommand(vm_names=names, host_guid=host.guid, host_name=host.name)
            verdict = await self._send(host, command)
            if verdict.ok:
                self.vm_stats.update(verdict.read)

    async def collect_volumes(self) -> None:
        for pool in self.server.zone.shared_pools:
            volumes = self.server.volumes(pool.uuid)
            for host in self.server.up_hosts():
                running = set(self.server.vm_names(host.guid))
                paths = [path for path, vm in volumes.items() if vm in running]
                if not paths:
                    continue
                command = GetVolumeStatsCommand(
                    volume_uuids=paths, pool_type=pool.type, pool_uuid=pool.uuid,
                    wait=STATS_TIMEOUT,
                )  # fmt: skip
                verdict = await self._send(host, command)
                if verdict.ok:
                    self.volume_stats.update(verdict.read)

    async def collect_storage(self) -> None:
        up = {h.guid: h for h in self.server.up_hosts()}
        for pool in self.server.zone.shared_pools:
            hosts = [up[g] for g in self.server.pool_hosts(pool.uuid) if g in up]
            if not hosts:
                continue  # "check if the pool has enabled hosts"
            command = GetStorageStatsCommand(
                id=pool.uuid, pool_type=pool.type, local_path=pool.path
            )
            verdict = await self._send(random.choice(hosts), command)
            if verdict.ok:
                self.pool_stats[pool.uuid] = dict(verdict.read)

    def latencies(self, since: float = 0, until: float = math.inf) -> dict[str, list[float]]:
        """Answer times (s) by command, of the commands sent between the wall-clock times
        ``since`` and ``until``."""
        found: dict[str, list[float]] = {}
        for s in self.samples:
            if since <= s.wall <= until:
                found.setdefault(s.command, []).append(s.seconds)
        return found

    def summary(self) -> dict[str, Any]:
        failed = [s for s in self.samples if not s.verdict.ok]
        return {
            "interval_s": self.interval,
            "cycles": dict(self.cycles),
            "commands": len(self.samples),
            "failed_count": len(failed),
            "failed": [
                {"host": s.guid, "command": s.command, "reason": s.verdict.reason}
                for s in failed[-20:]
            ],
            "host": self.host_stats,
            "vm": self.vm_stats,
            "volume": self.volume_stats,
            "storage": self.pool_stats,
        }
