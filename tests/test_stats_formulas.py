"""The statistics formulas with fixed samples: what the Java agent computes from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.hypervisor.hoststats import (
    CpuMeter,
    HostReading,
    HostStatsError,
    Uptime,
    count_cpus,
    cpu_utilization,
    figures,
    memory_kib,
    parse_meminfo,
    parse_uptime,
    read_host,
    read_nic_bytes,
)
from agent.hypervisor.vmstats import (
    DiskCounters,
    DiskDevice,
    VmCounters,
    VmSample,
    devices,
    disk_figures,
    vm_figures,
    volume_path,
)
from agent.hypervisor.volstats import VolumeStatsError, volume_name

MEMINFO = """MemTotal:       16314260 kB
MemFree:         1021228 kB
MemAvailable:    9855404 kB
Buffers:          402580 kB
Cached:          8123456 kB
SwapCached:            0 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
"""


# --- host ---------------------------------------------------------------------------------


def test_cpu_utilization_from_uptime_and_idle() -> None:
    # 10 s passed; 4 CPUs idle 30 s in all = 7.5 s each: 25 % busy.
    assert cpu_utilization(Uptime(100, 300), Uptime(110, 330), cores=4) == pytest.approx(25.0)
    # All idle, all busy.
    assert cpu_utilization(Uptime(100, 300), Uptime(110, 340), cores=4) == pytest.approx(0.0)
    assert cpu_utilization(Uptime(100, 300), Uptime(110, 300), cores=4) == pytest.approx(100.0)
    # Idle growing faster than the clock (rounding in /proc/uptime) is clamped at 0.
    assert cpu_utilization(Uptime(100, 300), Uptime(110, 341), cores=4) == 0.0
    # No time passed, or no CPU counted: 0, never a division by zero.
    assert cpu_utilization(Uptime(100, 300), Uptime(100, 300), cores=4) == 0.0
    assert cpu_utilization(Uptime(100, 300), Uptime(110, 330), cores=0) == 0.0


def test_cpu_meter_measures_between_consecutive_calls() -> None:
    meter = CpuMeter(cores=2, last=Uptime(1000.0, 1500.0))
    assert meter.update(Uptime(1010.0, 1510.0)) == pytest.approx(50.0)  # 5 s idle of 10 per CPU
    assert meter.update(Uptime(1020.0, 1530.0)) == pytest.approx(0.0)  # against the last call
    assert meter.update(None) == 0.0  # unreadable: 0, as CPUStat
    # CPUStat then measures against a zero reading: the average since boot.
    assert meter.update(Uptime(2000.0, 3000.0)) == pytest.approx(25.0)


def test_meminfo_in_bytes_and_memory_in_kib() -> None:
    info = parse_meminfo(MEMINFO)
    assert info["MemTotal"] == 16314260 * 1024
    assert info["HugePages_Total"] == 0
    total, free = memory_kib(info)
    assert total == 16314260.0
    assert free == 1021228.0 + 8123456.0 + 402580.0  # MemFree + Cached + Buffers
    # What MemStat would do with a reservation (the Java agent passes 0).
    total_r, free_r = memory_kib(info, reserved=1024 * 1024 * 1024)
    assert (total_r, free_r) == (total - 1024 * 1024, free - 1024 * 1024)
    with pytest.raises(HostStatsError, match="no Cached line"):
        memory_kib(parse_meminfo("MemTotal: 1 kB\nMemFree: 1 kB\nBuffers: 1 kB\n"))


def test_parse_uptime_rejects_garbage() -> None:
    assert parse_uptime("8679.93 9788.34\n") == Uptime(8679.93, 9788.34)
    with pytest.raises(ValueError):
        parse_uptime("8679.93\n")


def test_host_figures_from_files(tmp_path: Path) -> None:
    proc, net, cpu = tmp_path / "proc", tmp_path / "net", tmp_path / "cpu"
    proc.mkdir()
    (proc / "uptime").write_text("200.00 300.00\n")
    (proc / "loadavg").write_text("0.75 0.50 0.25 1/84 18712\n")
    (proc / "meminfo").write_text(MEMINFO)
    (net / "cloudbr0" / "statistics").mkdir(parents=True)
    (net / "cloudbr0" / "statistics" / "rx_bytes").write_text("2048\n")
    (net / "cloudbr0" / "statistics" / "tx_bytes").write_text("1048576\n")
    for name in ("cpu0", "cpu1", "cpu2", "cpufreq", "cpuidle", "online"):
        (cpu / name).mkdir(parents=True)
    assert count_cpus(cpu) == 3
    reading = read_host("cloudbr0", proc, net)
    host = figures(reading, 12.5)
    assert host.cpu_utilization == 12.5
    assert host.load_average == 0.75
    assert (host.network_read_kib, host.network_write_kib) == (2.0, 1024.0)  # cumulative KiB
    assert host.total_memory_kib == 16314260.0
    # A missing interface counts zero; a missing meminfo is an error.
    assert read_nic_bytes("cloudbr9", net) == (0.0, 0.0)
    (proc / "meminfo").unlink()
    with pytest.raises(HostStatsError, match="meminfo"):
        read_host("cloudbr0", proc, net)


def test_host_figures_without_uptime_or_loadavg(tmp_path: Path) -> None:
    (tmp_path / "meminfo").write_text(MEMINFO)
    reading = read_host("", tmp_path, tmp_path)
    assert reading == HostReading(None, 0.0, 0.0, 0.0, parse_meminfo(MEMINFO))


# --- VMs ----------------------------------------------------------------------------------


def _sample(at_ms: float, cpu_ns: int, **counters: float) -> VmSample:
    values: dict[str, float] = {
        "net_rx_kib": 0.0,
        "net_tx_kib": 0.0,
        "disk_read_ios": 0,
        "disk_write_ios": 0,
        "disk_read_kib": 0.0,
        "disk_write_kib": 0.0,
    }
    values.update(counters)
    return VmSample(
        counters=VmCounters(at_ms=at_ms, cpu_time_ns=cpu_ns, **values),  # type: ignore[arg-type]
        vcpus=2,
        max_memory_kib=1048576,
        memory_kib=524288,
        unused_memory_kib=-1,
    )


def test_vm_first_sample_reports_memory_and_no_change() -> None:
    first = vm_figures(None, _sample(1000.0, 5_000_000_000, net_rx_kib=100.0))
    assert (first.num_cpus, first.memory_kib, first.target_memory_kib) == (2, 1048576.0, 524288.0)
    assert first.int_free_memory_kib == -1.0
    assert first.cpu_utilization == 0.0 and first.network_read_kib == 0.0


def test_vm_deltas_between_two_samples() -> None:
    old = _sample(
        10_000.0,
        5_000_000_000,
        net_rx_kib=100.0,
        net_tx_kib=50.0,
        disk_read_ios=10,
        disk_write_ios=20,
        disk_read_kib=64.0,
        disk_write_kib=128.0,
    )
    new = _sample(
        12_000.0,  # 2 s later
        8_000_000_000,  # 3 s of CPU over 2 vCPUs in 2 s: 75 %
        net_rx_kib=612.0,
        net_tx_kib=40.0,  # went backwards (a restarted VM): no change reported
        disk_read_ios=15,
        disk_write_ios=20,
        disk_read_kib=96.5,
        disk_write_kib=100.0,
    )
    got = vm_figures(old.counters, new)
    assert got.cpu_utilization == pytest.approx(75.0)
    assert got.network_read_kib == pytest.approx(512.0)
    assert got.network_write_kib == 0.0
    assert (got.disk_read_ios, got.disk_write_ios) == (5, 0.0)
    assert got.disk_read_kib == pytest.approx(32.5)
    assert got.disk_write_kib == 0.0
    assert got.memory_kib == 1048576.0  # current figures as ever


def test_vm_cpu_time_going_backwards_or_no_time_gives_zero() -> None:
    old = _sample(10_000.0, 9_000_000_000, net_rx_kib=1.0)
    assert vm_figures(old.counters, _sample(11_000.0, 1_000_000_000)).cpu_utilization == 0.0
    # Same millisecond, or an older sample after a newer one: no change, no Infinity.
    same = vm_figures(old.counters, _sample(10_000.0, 9_500_000_000, net_rx_kib=9.0))
    assert same.cpu_utilization == 0.0 and same.network_read_kib == 0.0


def test_disk_deltas() -> None:
    old = DiskCounters("vol-1", read_ios=10, write_ios=5, read_bytes=4096, write_bytes=512)
    new = DiskCounters("vol-1", read_ios=12, write_ios=5, read_bytes=8192, write_bytes=0)
    got = disk_figures(old, new)
    assert got.counters == new  # the cumulative counters travel as they are
    assert (got.delta_read_ios, got.delta_write_ios) == (2, 0)
    assert (got.delta_read_bytes, got.delta_write_bytes) == (4096, 0)
    assert disk_figures(None, new).delta_read_ios == 0


DOMAIN_XML = """<domain type='kvm'><name>i-2-10-VM</name><devices>
  <disk type='file' device='disk'><source file='/mnt/0b1c/3f2e-root'/><target dev='vda'/></disk>
  <disk type='block' device='disk'><source dev='/dev/vg0/lv-data'/><target dev='vdb'/></disk>
  <disk type='network' device='disk'><source protocol='rbd' name='rbdpool/img-9'/>
    <target dev='vdc'/></disk>
  <disk type='file' device='cdrom'><target dev='hdc'/></disk>
  <disk type='file' device='disk'><source file='/mnt/0b1c/after-cdrom'/><target dev='vdd'/></disk>
  <interface type='bridge'><mac address='02:00:00:00:00:01'/><target dev='vnet3'/></interface>
  <interface type='vhostuser'><mac address='02:00:00:00:00:02'/></interface>
</devices></domain>"""


def test_devices_and_volume_paths_as_the_java_agent_reads_them() -> None:
    disks, nics = devices(DOMAIN_XML)
    assert [d.device for d in disks] == ["disk", "disk", "disk", "cdrom", "disk"]
    assert [d.target for d in disks] == ["vda", "vdb", "vdc", "hdc", "vdd"]
    assert [volume_path(d) for d in disks] == ["3f2e-root", "lv-data", "img-9", None, "after-cdrom"]
    assert [(n.target, n.mac) for n in nics] == [
        ("vnet3", "02:00:00:00:00:01"),
        (None, "02:00:00:00:00:02"),
    ]


@pytest.mark.parametrize(
    ("source", "protocol", "expected"),
    [
        ("/mnt/pool/vol", None, "vol"),
        ("/mnt/pool/vol/", None, "vol"),  # Java's split drops trailing empty strings
        ("/mnt/pool/", None, None),
        ("/mnt/pool/vol/extra", None, "vol"),
        ("/a/b", None, None),
        ("pool/image", "rbd", "image"),
        ("image", "rbd", None),
    ],
)
def test_volume_path(source: str, protocol: str | None, expected: str | None) -> None:
    assert volume_path(DiskDevice("disk", "vda", source, protocol)) == expected


def test_volume_name_is_the_last_component() -> None:
    assert volume_name("3f2e-root") == "3f2e-root"
    assert volume_name("/mnt/pool/3f2e-root") == "3f2e-root"
    for bad in ("", "..", "/mnt/pool/"):
        with pytest.raises(VolumeStatsError, match="does not name a volume"):
            volume_name(bad)
