"""A VM's figures for GetVmStats, GetVmDiskStats and GetVmNetworkStats, as the Java agent
computes them (4.21 ``LibvirtComputingResource.getVmStat`` / ``calculateVmMetrics``,
``getVmDiskStat``, ``getVmNetworkStat``).

GetVmStats reports, per VM, the change since the previous call for that VM (the agent keeps
the last sample; the first call gives zeros): CPU percent of the VM's vCPUs, KiB received
and sent over all its interfaces, read/write requests and KiB over its disks (CD-ROMs and
floppies left out). A change is reported only when positive (counters that went backwards,
as after a restart of the VM, give 0). Memory figures are the current ones, in KiB:
``memoryKBs`` the maximum, ``targetMemoryKBs`` the current balloon, ``intFreeMemoryKBs`` the
guest's unused memory from the balloon driver, or -1 when it tells none.

GetVmDiskStats reports cumulative counters per disk, in requests and bytes, walking the
disks in the domain's order and stopping at the first device that is not a disk (as the Java
agent does), with the positive change since the previous call for that disk.
GetVmNetworkStats reports cumulative bytes per interface.

The ``sample_*`` functions run in a worker thread on an open connection
(``Hypervisor.call``); they return None when libvirt has no such domain. The rest is pure.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from typing import Any

import libvirt
from attrs import frozen

_UNUSED = "unused"  # virDomainMemoryStats' VIR_DOMAIN_MEMORY_STAT_UNUSED, KiB


@frozen
class DiskDevice:
    """One ``<disk>`` of a domain's XML."""

    device: str  # disk, cdrom, floppy, lun; "disk" for every network disk (as the Java parser)
    target: str | None  # <target dev>: what blockStats takes
    source: str | None  # <source file|dev|name>
    protocol: str | None  # network disks: rbd, gluster, ...


@frozen
class NicDevice:
    """One ``<interface>`` of a domain's XML."""

    target: str | None  # <target dev>: what interfaceStats takes
    mac: str | None


def devices(domain_xml: str) -> tuple[list[DiskDevice], list[NicDevice]]:
    """The disks and interfaces of a domain, in the XML's order."""
    root = ET.fromstring(domain_xml)
    disks = []
    for disk in root.iterfind("./devices/disk"):
        source = disk.find("source")
        target = disk.find("target")
        network = disk.get("type") == "network"
        path = None
        if source is not None:
            path = source.get("name") if network else (source.get("file") or source.get("dev"))
        disks.append(
            DiskDevice(
                device="disk" if network else disk.get("device", "disk"),
                target=target.get("dev") if target is not None else None,
                source=path,
                protocol=source.get("protocol") if network and source is not None else None,
            )
        )
    nics = []
    for nic in root.iterfind("./devices/interface"):
        target, mac = nic.find("target"), nic.find("mac")
        nics.append(
            NicDevice(
                target=target.get("dev") if target is not None else None,
                mac=mac.get("address") if mac is not None else None,
            )
        )
    return disks, nics


def volume_path(disk: DiskDevice) -> str | None:
    """The volume's path as the MS stores it (LibvirtComputingResource.getDiskPathFromDiskDef):
    the fourth ``/``-separated token of the source (``/mnt/<pool>/<volume>``), the second for
    RBD (``<pool>/<image>``); None when the source is shorter."""
    if disk.source is None:
        return None
    tokens = disk.source.split("/")
    while tokens and not tokens[-1]:  # Java's split drops trailing empty strings
        tokens.pop()
    if disk.protocol == "rbd":
        return tokens[1] if len(tokens) > 1 else None
    return tokens[3] if len(tokens) > 3 else None


# --- GetVmStats -------------------------------------------------------------------------


@frozen
class VmCounters:
    """A VM's cumulative counters at one moment (LibvirtExtendedVmStatsEntry)."""

    at_ms: float  # monotonic clock, milliseconds
    cpu_time_ns: int
    net_rx_kib: float
    net_tx_kib: float
    disk_read_ios: int
    disk_write_ios: int
    disk_read_kib: float
    disk_write_kib: float


@frozen
class VmSample:
    counters: VmCounters
    vcpus: int
    max_memory_kib: int
    memory_kib: int
    unused_memory_kib: int  # -1: the guest's balloon driver told none


@frozen
class VmFigures:
    """What a VmStatsEntry carries, in its units."""

    num_cpus: int
    memory_kib: float
    target_memory_kib: float
    int_free_memory_kib: float
    cpu_utilization: float = 0.0  # percent
    network_read_kib: float = 0.0  # in the interval
    network_write_kib: float = 0.0
    disk_read_ios: float = 0.0
    disk_write_ios: float = 0.0
    disk_read_kib: float = 0.0
    disk_write_kib: float = 0.0


def _positive(value: float) -> float:
    return value if value > 0 else 0.0


def vm_figures(previous: VmCounters | None, sample: VmSample) -> VmFigures:
    """calculateVmMetrics: the current memory figures, and the change since ``previous``."""
    base = VmFigures(
        num_cpus=sample.vcpus,
        memory_kib=float(sample.max_memory_kib),
        target_memory_kib=float(sample.memory_kib),
        int_free_memory_kib=float(sample.unused_memory_kib),
    )
    now = sample.counters
    elapsed_ms = now.at_ms - previous.at_ms if previous is not None else 0.0
    # No time between two samples (or an older sample processed after a newer one): Java
    # would divide by zero and send Infinity, which Gson refuses; report no change instead.
    if previous is None or elapsed_ms <= 0:
        return base
    cpu = 0.0
    if sample.vcpus > 0:
        cpu = (now.cpu_time_ns - previous.cpu_time_ns) / (elapsed_ms * 1e6 * sample.vcpus)
    return VmFigures(
        num_cpus=base.num_cpus,
        memory_kib=base.memory_kib,
        target_memory_kib=base.target_memory_kib,
        int_free_memory_kib=base.int_free_memory_kib,
        cpu_utilization=_positive(cpu) * 100,
        network_read_kib=_positive(now.net_rx_kib - previous.net_rx_kib),
        network_write_kib=_positive(now.net_tx_kib - previous.net_tx_kib),
        disk_read_ios=_positive(now.disk_read_ios - previous.disk_read_ios),
        disk_write_ios=_positive(now.disk_write_ios - previous.disk_write_ios),
        disk_read_kib=_positive(now.disk_read_kib - previous.disk_read_kib),
        disk_write_kib=_positive(now.disk_write_kib - previous.disk_write_kib),
    )


def _domain(conn: Any, name: str) -> Any | None:
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def _nic_stats(dom: Any, nic: NicDevice) -> tuple[int, int]:
    """(rx_bytes, tx_bytes); libvirt also finds an interface by its MAC address."""
    stats = dom.interfaceStats(nic.target or nic.mac or "")
    return int(stats[0]), int(stats[4])


def sample_vm(conn: Any, name: str) -> VmSample | None:
    """getVmCurrentStats + the memory figures. Any libvirt error fails the whole VM, which
    the Java agent then leaves out of the answer."""
    dom = _domain(conn, name)
    if dom is None:
        return None
    disks, nics = devices(dom.XMLDesc(0))
    _state, max_mem, mem, vcpus, cpu_time = dom.info()
    rx = tx = 0
    for nic in nics:
        nic_rx, nic_tx = _nic_stats(dom, nic)
        rx, tx = rx + nic_rx, tx + nic_tx
    rd_req = wr_req = rd_bytes = wr_bytes = 0
    for disk in disks:
        if disk.device in ("cdrom", "floppy"):
            continue
        d_rd_req, d_rd_bytes, d_wr_req, d_wr_bytes, _errs = dom.blockStats(disk.target or "")
        rd_req, wr_req = rd_req + d_rd_req, wr_req + d_wr_req
        rd_bytes, wr_bytes = rd_bytes + d_rd_bytes, wr_bytes + d_wr_bytes
    unused = dom.memoryStats().get(_UNUSED, -1)
    return VmSample(
        counters=VmCounters(
            at_ms=time.monotonic() * 1000,
            cpu_time_ns=int(cpu_time),
            net_rx_kib=rx / 1024,
            net_tx_kib=tx / 1024,
            disk_read_ios=rd_req,
            disk_write_ios=wr_req,
            disk_read_kib=rd_bytes / 1024,
            disk_write_kib=wr_bytes / 1024,
        ),
        vcpus=int(vcpus),
        max_memory_kib=int(max_mem),
        memory_kib=int(mem),
        unused_memory_kib=int(unused),
    )


# --- GetVmDiskStats ---------------------------------------------------------------------


@frozen
class DiskCounters:
    """One disk's cumulative counters (virDomainBlockStats): requests and bytes."""

    path: str  # the volume's path (volume_path)
    read_ios: int
    write_ios: int
    read_bytes: int
    write_bytes: int


@frozen
class DiskFigures:
    """What a VmDiskStatsEntry carries: the counters and their positive change."""

    counters: DiskCounters
    delta_read_ios: int = 0
    delta_write_ios: int = 0
    delta_read_bytes: int = 0
    delta_write_bytes: int = 0


def disk_figures(previous: DiskCounters | None, now: DiskCounters) -> DiskFigures:
    if previous is None:
        return DiskFigures(now)

    def delta(a: int, b: int) -> int:
        return a - b if a > b else 0

    return DiskFigures(
        now,
        delta_read_ios=delta(now.read_ios, previous.read_ios),
        delta_write_ios=delta(now.write_ios, previous.write_ios),
        delta_read_bytes=delta(now.read_bytes, previous.read_bytes),
        delta_write_bytes=delta(now.write_bytes, previous.write_bytes),
    )


def sample_vm_disks(conn: Any, name: str) -> list[DiskCounters] | None:
    """getVmDiskStat: the disks up to the first device that is not a disk; those whose
    source gives no volume path are read but left out."""
    dom = _domain(conn, name)
    if dom is None:
        return None
    disks, _nics = devices(dom.XMLDesc(0))
    out = []
    for disk in disks:
        if disk.device != "disk":
            break
        rd_req, rd_bytes, wr_req, wr_bytes, _errs = dom.blockStats(disk.target or "")
        path = volume_path(disk)
        if path is not None:
            out.append(DiskCounters(path, rd_req, wr_req, rd_bytes, wr_bytes))
    return out


# --- GetVmNetworkStats ------------------------------------------------------------------


@frozen
class NicCounters:
    """One interface's cumulative bytes as libvirt reports them (from the guest's side:
    received = what the guest received)."""

    mac: str | None
    rx_bytes: int
    tx_bytes: int


def sample_vm_nics(conn: Any, name: str) -> list[NicCounters] | None:
    """getVmNetworkStat: every interface, in the XML's order."""
    dom = _domain(conn, name)
    if dom is None:
        return None
    _disks, nics = devices(dom.XMLDesc(0))
    out = []
    for nic in nics:
        rx, tx = _nic_stats(dom, nic)
        out.append(NicCounters(nic.mac, rx, tx))
    return out
