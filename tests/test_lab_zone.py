"""Both lab hosts reach Up through a 4.21 MS's connect sequence and stay Up.

Real parts only: the two-host lab, the lab MS (zone: traffic labels ``cloudbr0``, the shared
SharedMountPoint pool) in host A's network namespace, one agent process per host. The MS
judges every answer as the 4.21 class that reads it (lab.ms_side) and runs its statistics
cycle at a short interval; the figures it collects are checked against the hosts.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from lab.ca import LAB_CA_DIRNAME, LabCA
from lab.cloud import GUID_SUFFIX, LabCloud
from lab.guest import MEMORY_MIB
from lab.hosts import Lab
from lab.storage import SHARED_POOL_PATH, SHARED_POOL_UUID
from tests.conftest_lab import LAB_DIR

pytestmark = pytest.mark.lab
PING = 2  # the lab's short ping interval (s)
STATS = 1.0  # the MS's statistics interval (s)
VM = "zone-vm"
SEQUENCE = [
    "CleanupNetworkRulesCmd",
    "ModifyStoragePoolCommand",
    "CheckNetworkCommand",
    "SetHostParamsCommand",
    "ModifySshKeysCommand",
    "ReadyCommand",
    "ReadyCommand",
]


@pytest.fixture(scope="module")
def cloud(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabCloud]:
    c = LabCloud(lab, tmp_path_factory.mktemp("zone"), LabCA.load(LAB_DIR / LAB_CA_DIRNAME))
    try:
        c.start_ms("ms1", "a", ping_interval=PING, stats_interval=STATS)
        c.start_agent("a")
        c.start_agent("b")
        yield c
    finally:
        c.close()
        for host in lab.hosts.values():
            host.remove_domain(VM)
            # The agents' pools are transient: stopping one removes its definition.
            host.run(
                ["virsh", "-c", "qemu:///system", "pool-destroy", SHARED_POOL_UUID],
                check=False,
                capture_output=True,
            )


def _within(value: float, expected: float, fraction: float = 0.01) -> bool:
    return abs(value - expected) <= fraction * abs(expected)


def _meminfo_total_kib() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    raise AssertionError("no MemTotal in /proc/meminfo")


async def _statuses(cloud: LabCloud) -> dict[str, tuple[str, bool, int]]:
    return {n: (h["status"], h["connected"], h["pings"]) for n, h in (await cloud.hosts()).items()}


async def test_both_hosts_up_with_the_pool_stay_up_and_report_what_they_have(
    cloud: LabCloud, lab: Lab
) -> None:
    a, b = lab.hosts["a"], lab.hosts["b"]
    for name in ("a", "b"):
        await cloud.wait_host(name, timeout=90)
    # 1. Through the real sequence, in order; every answer what the 4.21 MS reads.
    for name in ("a", "b"):
        ups = [c for c in await cloud.connects(name) if c["outcome"] == "Up"]
        assert ups, await cloud.connects(name)
        steps = ups[0]["steps"]
        assert [s["command"] for s in steps] == SEQUENCE, json.dumps(ups[0], indent=1)
        sync = [s for s in steps if not s["async"]]
        assert all(s["ok"] for s in sync[:-1]), json.dumps(steps, indent=1)
        assert [s["wait"] for s in sync] == [300, 120, 60, 0]
        assert ups[0]["connect_to_up_s"] > 0

    # 2. The pool: attached on both, a libvirt pool on the same path in each host, and the
    # same storage behind it.
    hosts = await cloud.hosts()
    assert hosts["a"]["pools"] == hosts["b"]["pools"] == [SHARED_POOL_UUID]
    for host in (a, b):
        xml = host.virsh("pool-dumpxml", SHARED_POOL_UUID)
        assert f"<path>{SHARED_POOL_PATH}</path>" in xml, xml
        assert "running" in host.virsh("pool-info", SHARED_POOL_UUID)
    probe = f"probe-{uuid.uuid4()}"
    a.check(["sh", "-c", f"echo {probe} > {SHARED_POOL_PATH}/{probe}"])
    try:
        assert b.check(["cat", f"{SHARED_POOL_PATH}/{probe}"]).strip() == probe
    finally:
        a.run(["rm", "-f", f"{SHARED_POOL_PATH}/{probe}"])

    # A VM on A whose disk is a volume of the pool, which the MS knows about.
    volume = str(uuid.uuid4())
    template = await trio.to_thread.run_sync(lab.place_template)
    disk = f"{SHARED_POOL_PATH}/{volume}"
    await trio.to_thread.run_sync(a.create_overlay, disk, template)
    await trio.to_thread.run_sync(lambda: a.define_disk_guest(VM, disk))
    await cloud.track_volume(SHARED_POOL_UUID, volume, VM)

    # 3. Up for ten ping intervals, pinging, while the statistics cycle runs.
    start = await _statuses(cloud)
    cycles = (await cloud.stats())["cycles"]
    with trio.move_on_after(10 * PING):
        while True:
            now = await _statuses(cloud)
            assert all(s[:2] == ("Up", True) for s in now.values()), now
            await trio.sleep(0.25)
    end = await _statuses(cloud)
    assert all(s[:2] == ("Up", True) for s in end.values()), end
    for name in ("a", "b"):
        assert end[name][2] - start[name][2] >= 9, (start, end)  # ten intervals, one edge
    stats = await cloud.stats()
    assert all(stats["cycles"][k] > cycles.get(k, 0) + 5 for k in ("host", "storage")), stats
    failed = stats["failed"]
    assert stats["failed_count"] == 0, failed

    # 4. The figures, against what the hosts really have (sizes within 1%).
    guid_a = "a" + GUID_SUFFIX
    host_stats: dict[str, Any] = stats["host"][guid_a]
    assert _within(host_stats["totalMemoryKBs"], _meminfo_total_kib())
    assert 0 < host_stats["freeMemoryKBs"] <= host_stats["totalMemoryKBs"]
    assert "b" + GUID_SUFFIX in stats["host"]
    pool = stats["storage"][SHARED_POOL_UUID]
    fs = os.statvfs(lab.shared_pool_dir)
    assert _within(pool["capacityBytes"], fs.f_blocks * fs.f_frsize)
    used = (fs.f_blocks - fs.f_bfree) * fs.f_frsize
    assert abs(pool["usedBytes"] - used) <= 0.01 * fs.f_blocks * fs.f_frsize
    vm = stats["vm"][VM]
    assert vm["numCPUs"] == 1 and _within(vm["memoryKBs"], MEMORY_MIB * 1024)
    sizes = stats["volume"][volume]
    info = json.loads(a.check(["qemu-img", "info", "--output=json", "-U", disk]))
    assert _within(sizes["virtualSize"], info["virtual-size"])
    on_disk = (lab.shared_pool_dir / volume).stat().st_blocks * 512  # libvirt's allocation
    assert _within(sizes["physicalsize"], on_disk)
