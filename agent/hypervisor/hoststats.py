"""The host's own figures for GetHostStatsCommand, from /proc and /sys (no libvirt here).

Computed as CloudStack's KVM agent computes them (4.21: ``LibvirtGetHostStatsCommandWrapper``
with ``org.apache.cloudstack.utils.linux.CPUStat`` and ``MemStat``, and
``LibvirtComputingResource.getNicStats``):

* CPU: from ``/proc/uptime`` (seconds up, and idle seconds summed over every CPU), between
  this call and the previous one (the first baseline is taken when the agent starts):
  ``(1 - (Δidle / cores) / Δuptime) * 100``, never below 0; 0 when no time passed. ``cores``
  counts ``/sys/devices/system/cpu/cpu<N>``.
* Load: the first field of ``/proc/loadavg``.
* Network: ``rx_bytes`` / ``tx_bytes`` of ``public.network.device`` ÷ 1024: cumulative KiB
  since the interface appeared, not a rate; 0 when it cannot be read.
* Memory: ``/proc/meminfo``, KiB: total = MemTotal, free = MemFree + Cached + Buffers.
  MemStat would subtract ``host.reserved.mem.mb`` (and add ``host.overcommit.mem.mb``) from
  both, but the Java agent builds its MemStat in a field initialiser, before it reads those
  properties, so it always subtracts 0: the figures the MS gets are the kernel's. (The MS
  shows total - free as used memory, which the reservation would not change anyway.)

The readers are blocking file reads: callers run them in a worker thread.
"""

from __future__ import annotations

import re
from pathlib import Path

import structlog
from attrs import define, frozen

log = structlog.get_logger("agent.hypervisor.stats")

PROC = Path("/proc")
SYS_CPU = Path("/sys/devices/system/cpu")
SYS_NET = Path("/sys/class/net")
_CPU_DIR = re.compile(r"cpu\d+")


class HostStatsError(Exception):
    """A file the host figures cannot do without could not be read."""


@frozen
class Uptime:
    """``/proc/uptime``: seconds since boot, and idle seconds summed over all CPUs."""

    uptime: float
    idle: float


@frozen
class HostReading:
    """One reading of the files, before the CPU figure is computed against the last one."""

    uptime: Uptime | None
    load_average: float
    rx_bytes: float
    tx_bytes: float
    meminfo: dict[str, int]  # bytes


@frozen
class HostFigures:
    """What GetHostStatsAnswer carries (its HostStatsEntry), in its units."""

    cpu_utilization: float  # percent
    load_average: float
    network_read_kib: float  # cumulative
    network_write_kib: float
    total_memory_kib: float
    free_memory_kib: float


# --- pure: parsing and formulas ---------------------------------------------------------


def parse_uptime(text: str) -> Uptime:
    fields = text.split()
    if len(fields) < 2:
        raise ValueError(f"expected two numbers, got {text.strip()!r:.60}")
    return Uptime(float(fields[0]), float(fields[1]))


def parse_meminfo(text: str) -> dict[str, int]:
    """``Key:   123 kB`` lines -> key -> bytes (every value times 1024, as MemStat does)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        fields = rest.split()
        if sep and fields and fields[0].isdigit():
            out[key.strip()] = int(fields[0]) * 1024
    return out


def cpu_utilization(previous: Uptime, current: Uptime, cores: int) -> float:
    """CPUStat.getCpuUsedPercent: percent of all CPUs busy between two readings."""
    if cores <= 0:
        return 0.0
    elapsed = current.uptime - previous.uptime
    if elapsed <= 0:
        return 0.0
    idle_per_cpu = (current.idle - previous.idle) / cores
    return max((1 - idle_per_cpu / elapsed) * 100, 0.0)


def memory_kib(
    meminfo: dict[str, int], reserved: int = 0, overcommit: int = 0
) -> tuple[float, float]:
    """(total, free) in KiB as MemStat computes them from bytes; ``reserved`` and
    ``overcommit`` (bytes) are 0 in the Java agent (see the module's text)."""
    try:
        total = meminfo["MemTotal"] - reserved + overcommit
        free = meminfo["MemFree"] - reserved + overcommit + meminfo["Cached"] + meminfo["Buffers"]
    except KeyError as exc:
        raise HostStatsError(f"/proc/meminfo has no {exc.args[0]} line") from None
    return total / 1024, free / 1024


def figures(reading: HostReading, cpu: float) -> HostFigures:
    total, free = memory_kib(reading.meminfo)
    return HostFigures(
        cpu_utilization=cpu,
        load_average=reading.load_average,
        network_read_kib=reading.rx_bytes / 1024,
        network_write_kib=reading.tx_bytes / 1024,
        total_memory_kib=total,
        free_memory_kib=free,
    )


@define
class CpuMeter:
    """The previous /proc/uptime reading, for the next utilisation figure (CPUStat's state).
    Owned by one task at a time: updated on the trio thread, never in a worker."""

    cores: int
    last: Uptime | None

    @classmethod
    def started(cls, proc: Path = PROC, sys_cpu: Path = SYS_CPU) -> CpuMeter:
        """The baseline, taken when the agent starts, as the Java agent's CPUStat does."""
        return cls(count_cpus(sys_cpu), read_uptime(proc))

    def update(self, current: Uptime | None, sys_cpu: Path = SYS_CPU) -> float:
        if current is None:  # unreadable: CPUStat reports 0 and keeps a zero reading
            self.last = Uptime(0.0, 0.0)
            return 0.0
        if self.cores <= 0:
            self.cores = count_cpus(sys_cpu)
        previous, self.last = self.last, current
        return cpu_utilization(previous or Uptime(0.0, 0.0), current, self.cores)


# --- blocking readers (worker threads) --------------------------------------------------


def count_cpus(sys_cpu: Path = SYS_CPU) -> int:
    """``/sys/devices/system/cpu/cpu<N>`` entries (offline CPUs included, as CPUStat counts)."""
    try:
        return sum(1 for entry in sys_cpu.iterdir() if _CPU_DIR.fullmatch(entry.name))
    except OSError:
        return 0


def read_uptime(proc: Path = PROC) -> Uptime | None:
    path = proc / "uptime"
    try:
        return parse_uptime(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("cannot read the CPU figures", path=str(path), error=str(exc))
        return None


def read_load_average(proc: Path = PROC) -> float:
    path = proc / "loadavg"
    try:
        return float(path.read_text().split()[0])
    except (OSError, ValueError, IndexError) as exc:
        log.warning("cannot read the load average", path=str(path), error=str(exc))
        return 0.0


def read_meminfo(proc: Path = PROC) -> dict[str, int]:
    path = proc / "meminfo"
    try:
        return parse_meminfo(path.read_text())
    except OSError as exc:
        raise HostStatsError(f"cannot read {path}: {exc.strerror}") from None


_unreadable_devices: set[str] = set()  # warned about once each, not every minute


def read_nic_bytes(device: str, sys_net: Path = SYS_NET) -> tuple[float, float]:
    """(rx_bytes, tx_bytes) of ``device``; zeros when it cannot be read (the Java agent logs
    a warning and reports 0.0)."""
    out = []
    for counter in ("rx_bytes", "tx_bytes"):
        path = sys_net / device / "statistics" / counter
        try:
            out.append(float(path.read_text().strip()))
        except (OSError, ValueError) as exc:
            if device not in _unreadable_devices:
                _unreadable_devices.add(device)
                log.warning(
                    "cannot read the public interface's counters; reporting 0 "
                    "(check public.network.device)",
                    device=device,
                    path=str(path),
                    error=str(exc),
                )
            return 0.0, 0.0
    return out[0], out[1]


def read_host(public_device: str, proc: Path = PROC, sys_net: Path = SYS_NET) -> HostReading:
    rx, tx = read_nic_bytes(public_device, sys_net) if public_device else (0.0, 0.0)
    return HostReading(
        uptime=read_uptime(proc),
        load_average=read_load_average(proc),
        rx_bytes=rx,
        tx_bytes=tx,
        meminfo=read_meminfo(proc),
    )
