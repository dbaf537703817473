"""Statistics: the figures the MS collects while the host is Up, and the samples they are
computed against.

The Java agent reports CPU and VM figures as changes since its previous call; this object
keeps those previous samples for the life of the agent (a VM's are dropped when libvirt no
longer has it). Every reading runs in a worker thread under the limiter of the statistics'
own libvirt connection (:func:`connection_for`), one VM per call; the arithmetic and the
samples it updates stay on the trio thread.

Why a connection of their own: a statistics call can wait for as long as a VM's QEMU takes to
answer its monitor (forever, for a QEMU that is stopped or hung), and while one call waits
on a libvirt connection, libvirt's client delays the other calls made on that connection
until the daemon's next keepalive message (up to libvirtd's keepalive_interval, 5 s by
default: seen with libvirt 9.0, a blockStats on a QEMU stopped with SIGSTOP holding the VM
report of the pings for up to 5 s each; tests/test_lab_stats.py checks the pings through such
a hang). On the agent's main connection that would hold back the VM report of every ping and
every command, and waiting calls would hold the main limiter's threads. Here they hold only
the statistics' threads; a hung QEMU delays the statistics, as it does the Java agent's.

Figures and formulas: :mod:`agent.hypervisor.hoststats`, :mod:`agent.hypervisor.vmstats`,
:mod:`agent.hypervisor.volstats`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar

import structlog
import trio
from attrs import frozen

from agent.hypervisor import hoststats, vmstats, volstats
from agent.hypervisor.connection import Hypervisor, HypervisorError
from agent.hypervisor.hoststats import CpuMeter, HostFigures
from agent.hypervisor.vmstats import DiskCounters, DiskFigures, NicCounters, VmCounters, VmFigures
from agent.hypervisor.volstats import VolumeSize, VolumeStatsError

log = structlog.get_logger("agent.hypervisor.stats")
_T = TypeVar("_T")

__all__ = [
    "DiskFigures",
    "HostFigures",
    "NicCounters",
    "Statistics",
    "VmFigures",
    "VolumeResult",
    "VolumeSize",
]


@frozen
class VolumeResult:
    """Sizes of every volume asked for, or why there are none (the MS gets one or the other)."""

    sizes: dict[str, VolumeSize] | None
    error: str | None = None


STATS_THREADS = 2  # of the statistics' connection: reads, one VM at a time per command


def connection_for(main: Hypervisor) -> Hypervisor:
    """The statistics' own connection to the libvirtd ``main`` talks to (its ``run`` is a
    task for the life of the agent, as the main one's)."""
    return Hypervisor(main.uri, private_device=main.private_device, threads=STATS_THREADS)


class Statistics:
    def __init__(self, hypervisor: Hypervisor, *, cpu: CpuMeter | None = None) -> None:
        """``hypervisor``: a connection of the statistics' own (:func:`connection_for`)."""
        self.hypervisor = hypervisor
        self._hv = hypervisor
        # The CPU baseline is taken now, when the agent starts, as the Java agent's CPUStat:
        # the first answer covers the time since then. (One read of /proc/uptime.)
        self._cpu = cpu if cpu is not None else CpuMeter.started()
        self._vm_last: dict[str, VmCounters] = {}
        self._disk_last: dict[tuple[str, str], DiskCounters] = {}

    async def _in_thread(self, fn: Callable[[], _T]) -> _T:
        return await trio.to_thread.run_sync(fn, limiter=self._hv.limiter)

    # --- host ---------------------------------------------------------------------------

    async def host(self, public_device: str) -> HostFigures:
        """HostStatsError when /proc/meminfo cannot be read (no figures without it)."""
        reading = await self._in_thread(partial(hoststats.read_host, public_device))
        return hoststats.figures(reading, self._cpu.update(reading.uptime))

    # --- VMs ----------------------------------------------------------------------------

    async def _per_vm(
        self, names: Sequence[str], sample: Callable[[Any, str], _T | None], what: str
    ) -> dict[str, _T] | None:
        """``sample`` of each VM libvirt has; None when libvirtd cannot be reached at all
        (the Java agent then sends a null map). A VM that is missing or fails is left out."""
        if not self._hv.connected:
            log.warning(
                f"no VM {what}statistics: libvirtd is not reachable", error=self._hv.last_error
            )
            return None
        out: dict[str, _T] = {}
        for name in dict.fromkeys(names):
            try:
                got = await self._hv.call(partial(_bound, sample, name))
            except HypervisorError as exc:
                log.warning(f"cannot read the VM's {what}statistics", vm=name, error=str(exc))
                continue
            if got is None:
                log.info(f"no VM {what}statistics: libvirt has no such domain", vm=name)
                self._forget(name)
                continue
            out[name] = got
        return out

    def _forget(self, vm: str) -> None:
        self._vm_last.pop(vm, None)
        for key in [k for k in self._disk_last if k[0] == vm]:
            del self._disk_last[key]

    async def vms(self, names: Sequence[str]) -> dict[str, VmFigures] | None:
        samples = await self._per_vm(names, vmstats.sample_vm, "")
        if samples is None:
            return None
        out = {}
        for name, sample in samples.items():
            previous = self._vm_last.get(name)
            out[name] = vmstats.vm_figures(previous, sample)
            # Two calls may overlap: keep the newest sample as the baseline.
            if previous is None or sample.counters.at_ms > previous.at_ms:
                self._vm_last[name] = sample.counters
        return out

    async def vm_disks(self, names: Sequence[str]) -> dict[str, list[DiskFigures]] | None:
        samples = await self._per_vm(names, vmstats.sample_vm_disks, "disk ")
        if samples is None:
            return None
        out: dict[str, list[DiskFigures]] = {}
        for name, disks in samples.items():
            out[name] = []
            for counters in disks:
                key = (name, counters.path)
                out[name].append(vmstats.disk_figures(self._disk_last.get(key), counters))
                self._disk_last[key] = counters
        return out

    async def vm_nics(self, names: Sequence[str]) -> dict[str, list[NicCounters]] | None:
        return await self._per_vm(names, vmstats.sample_vm_nics, "network ")

    # --- volumes ------------------------------------------------------------------------

    async def volumes(self, pool_uuid: str, paths: Sequence[str]) -> VolumeResult:
        try:
            sizes = await self._hv.call(lambda conn: volstats.volume_sizes(conn, pool_uuid, paths))
        except (HypervisorError, VolumeStatsError) as exc:
            log.warning("no volume statistics", pool=pool_uuid, error=str(exc))
            return VolumeResult(None, f"Can't get volume stats: {exc}")
        return VolumeResult(sizes)


def _bound(sample: Callable[[Any, str], _T], name: str, conn: Any) -> _T:
    return sample(conn, name)
