"""Storage pools and the HA heartbeat on the two-host lab: real libvirtds, the shared pool
bind-mounted at the same path in both hosts, one agent process per host driven by the lab MS,
real VMs. Every answer is judged by lab.ms_side as a 4.21 management server would.

The agents run with ``ha.heartbeat.sharedmountpoint=true`` (the lab has no NFS client), a
heartbeat every second and a 6 s limit instead of 60, so that staleness and fencing take
seconds.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from lab.ca import LAB_CA_DIRNAME, LabCA
from lab.cloud import LabCloud as Cloud
from lab.hosts import Lab, LabHost
from lab.ms_side import HostEffect, ha, verdict_for
from lab.storage import LOCAL_IMAGES, SHARED_POOL_PATH, SHARED_POOL_UUID
from protocol.messages.enums import StoragePoolType
from protocol.messages.ha import CheckOnHostAnswer, CheckOnHostCommand, FenceAnswer, FenceCommand
from protocol.messages.storage import (
    GetStorageStatsAnswer,
    GetStorageStatsCommand,
    ModifyStoragePoolAnswer,
    ModifyStoragePoolCommand,
)
from protocol.messages.to import HostTO, NetworkTO, StorageFilerTO
from tests.conftest_lab import LAB_DIR

pytestmark = pytest.mark.lab

TIMEOUT = 6  # ha.heartbeat.timeout of the lab's agents
HA_KEYS = (
    "ha.heartbeat.sharedmountpoint=true",
    "ha.heartbeat.interval=1",
    f"ha.heartbeat.timeout={TIMEOUT}",
)
NFS_UUID = "9d4c1b7e-2a36-4f58-8e0d-5c7b6a4f3e21"
GONE_IP = "10.200.0.9"  # a host that wrote a heartbeat once and is no more
SHARED = StorageFilerTO(
    id=1,
    uuid=SHARED_POOL_UUID,
    host="localhost",
    path=SHARED_POOL_PATH,
    port=0,
    type=StoragePoolType.SHARED_MOUNT_POINT,
)
ATTACH = ModifyStoragePoolCommand(add=True, pool=SHARED, local_path="/mnt//lab-primary")


def _forget_pools(lab: Lab) -> None:
    for host in lab.hosts.values():
        for pool in (SHARED_POOL_UUID, NFS_UUID):
            for step in ("pool-destroy", "pool-undefine"):
                host.run(["virsh", "-c", "qemu:///system", step, pool], capture_output=True)


def _remove_vms(lab: Lab, *names: str) -> None:
    for host in lab.hosts.values():
        for name in names:
            host.remove_domain(name)


@pytest.fixture(scope="module")
def cloud(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    _forget_pools(lab)
    c = Cloud(lab, tmp_path_factory.mktemp("pools-cloud"), LabCA.load(LAB_DIR / LAB_CA_DIRNAME))
    try:
        c.start_ms("ms1", "a")
        c.start_agent("a", *HA_KEYS)
        c.start_agent("b", *HA_KEYS)
        trio.run(_both_up, c)
        yield c
    finally:
        c.close()
        _forget_pools(lab)
        for leftover in ("KVMHA", "fence-on-root"):
            path = lab.shared_pool_dir / leftover
            if path.is_dir():
                for f in path.iterdir():
                    f.unlink()
                path.rmdir()
            elif path.exists():
                path.unlink()


async def _both_up(c: Cloud) -> None:
    for name in ("a", "b"):
        await c.wait_host(name, timeout=60)


def virsh(host: LabHost, *args: str) -> str:
    return host.virsh(*args)


def events(c: Cloud, name: str, text: str) -> list[dict[str, Any]]:
    return [e for e in c.log_events(name) if text in str(e.get("event", ""))]


def within_1pct(a: int, b: int) -> bool:
    return abs(a - b) <= 0.01 * max(a, b)


async def test_the_shared_pool_is_one_pool_at_the_same_path_on_both_hosts(
    cloud: Cloud, lab: Lab
) -> None:
    answers = {name: await cloud.ask(name, ATTACH) for name in ("a", "b")}
    fs = os.statvfs(lab.shared_pool_dir)  # the machine's view of the same filesystem
    capacity = fs.f_blocks * fs.f_frsize
    for name, answer in answers.items():
        verdict = verdict_for(ATTACH, answer)
        assert verdict.ok, (name, verdict.reason)
        assert isinstance(answer, ModifyStoragePoolAnswer) and answer.pool_info is not None
        info = answer.pool_info
        assert (info.host_path, info.local_path) == (SHARED_POOL_PATH, "/mnt//lab-primary")
        # libvirt's figures for a dir pool: statvfs's blocks and free blocks.
        assert within_1pct(info.capacity_bytes, capacity), (info.capacity_bytes, capacity)
        free = os.statvfs(lab.shared_pool_dir).f_bfree * fs.f_frsize
        assert within_1pct(info.available_bytes, free), (info.available_bytes, free)
        host = lab.hosts[name]
        xml = virsh(host, "pool-dumpxml", SHARED_POOL_UUID)
        assert f"<name>{SHARED_POOL_UUID}</name>" in xml and "<pool type='dir'>" in xml
        assert f"<path>{SHARED_POOL_PATH}</path>" in xml
        assert "running" in virsh(host, "pool-info", SHARED_POOL_UUID)
    # One storage: a volume put there shows in both hosts' pool, at the same path.
    probe = f"probe-{os.getpid()}.img"
    (lab.shared_pool_dir / probe).write_bytes(b"\0" * 4096)
    try:
        for host in lab.hosts.values():
            virsh(host, "pool-refresh", SHARED_POOL_UUID)
            path = virsh(host, "vol-path", "--pool", SHARED_POOL_UUID, probe)
            assert path == f"{SHARED_POOL_PATH}/{probe}"
    finally:
        (lab.shared_pool_dir / probe).unlink()
    # GetStorageStatsCommand, to either host: the same pool, the same figures.
    stats_cmd = GetStorageStatsCommand(
        id=SHARED_POOL_UUID,
        pool_type=StoragePoolType.SHARED_MOUNT_POINT,
        local_path=SHARED_POOL_PATH,
    )
    for name in ("a", "b"):
        stats = await cloud.ask(name, stats_cmd)
        assert verdict_for(stats_cmd, stats).ok
        assert isinstance(stats, GetStorageStatsAnswer)
        fs = os.statvfs(lab.shared_pool_dir)
        assert within_1pct(stats.capacity_bytes, fs.f_blocks * fs.f_frsize)
        used = (fs.f_blocks - fs.f_bfree) * fs.f_frsize
        assert abs(stats.used_bytes - used) <= 0.01 * stats.capacity_bytes
    # Both agents write their heartbeat there, and it moves on every second.
    files = [lab.shared_pool_dir / "KVMHA" / f"hb-{h.ip}" for h in lab.hosts.values()]
    with trio.fail_after(10):
        while not all(f.exists() and f.read_text().strip() for f in files):
            await trio.sleep(0.2)
    first = [int(f.read_text()) for f in files]
    assert all(abs(value - time.time()) < 5 for value in first)
    with trio.fail_after(10):
        while not all(_value(f) > v for f, v in zip(files, first, strict=True)):
            await trio.sleep(0.2)


def _value(path: Path) -> int:
    text = path.read_text().strip()  # written in place: may be caught empty
    return int(text) if text else 0


def about(ip: str) -> CheckOnHostCommand:
    return CheckOnHostCommand(host=HostTO(guid=f"{ip}-guid", private_network=NetworkTO(ip=ip)))


async def test_a_stale_heartbeat_reads_down_and_a_fresh_one_up(cloud: Cloud, lab: Lab) -> None:
    for name in ("a", "b"):
        assert verdict_for(ATTACH, await cloud.ask(name, ATTACH)).ok
    a = lab.hosts["a"]
    # b on a, whose agent writes every second: Up.
    up = await cloud.ask("b", about(a.ip))
    assert isinstance(up, CheckOnHostAnswer) and not up.result and up.alive
    assert verdict_for(about(a.ip), up).read["status"] == "Up"
    # A heartbeat an earlier agent left behind (the IP no longer writes): Down, from both.
    stale = lab.shared_pool_dir / "KVMHA" / f"hb-{GONE_IP}"
    stale.write_text(f"{int(time.time()) - 120}\n")
    neighbours = [await cloud.ask(name, about(GONE_IP)) for name in ("a", "b")]
    for answer in neighbours:
        assert isinstance(answer, CheckOnHostAnswer) and answer.result and not answer.alive
        assert "last written 12" in (answer.details or "")
    investigation = ha.investigate(None, neighbours)  # the suspect itself does not answer
    assert investigation.read["status"] == "Down", investigation.reason
    fence = FenceCommand(
        vm_name="i-2-10-VM",
        host_guid="gone",
        host_ip=GONE_IP,
        host=HostTO(private_network=NetworkTO(ip=GONE_IP)),
    )
    fenced = await cloud.ask("a", fence)
    assert isinstance(fenced, FenceAnswer) and verdict_for(fence, fenced).ok
    # It comes back: Up again, and fencing is refused.
    stale.write_text(f"{int(time.time())}\n")
    again = await cloud.ask("b", about(GONE_IP))
    assert verdict_for(about(GONE_IP), again).read["status"] == "Up"
    refused = await cloud.ask("b", fence)
    assert isinstance(refused, FenceAnswer) and not refused.result
    stale.unlink()


async def test_an_unwritable_heartbeat_fences_the_vms_on_the_pool_only(
    cloud: Cloud, lab: Lab
) -> None:
    a = lab.hosts["a"]
    for name in ("a", "b"):
        assert verdict_for(ATTACH, await cloud.ask(name, ATTACH)).ok
    _remove_vms(lab, "fence-on", "fence-off")
    template = lab.place_template()
    on_disk, off_disk = f"{SHARED_POOL_PATH}/fence-on-root", f"{LOCAL_IMAGES}/fence-off-root"
    a.run(["rm", "-f", on_disk, off_disk], check=True)
    a.create_overlay(on_disk, template)
    a.check(["cp", template, off_disk])  # a disk of its own, nothing on the pool
    a.define_disk_guest("fence-on", on_disk)
    a.define_disk_guest("fence-off", off_disk)
    assert a.domain_state("fence-on") == a.domain_state("fence-off") == "running"
    hb_dir = f"{SHARED_POOL_PATH}/KVMHA"
    # The pool turns read-only for host a only (a read-only bind mount in its namespace).
    a.check(["mount", "--bind", hb_dir, hb_dir])
    a.check(["mount", "-o", "remount,bind,ro", hb_dir])
    try:
        t0 = time.monotonic()
        with trio.fail_after(TIMEOUT + 20):
            while a.domain_state("fence-on") == "running":
                await trio.sleep(0.2)
        took = time.monotonic() - t0
        assert a.domain_state("fence-on") == "shut off"
        assert a.domain_state("fence-off") == "running"  # its disk is elsewhere
        assert took >= TIMEOUT - 1.5, took  # not before the limit (a write was due 1 s after)
        lost = events(cloud, "a", "HEARTBEAT LOST")
        assert lost and lost[-1]["level"] == "critical"
        assert "Read-only file system" in lost[-1]["error"]
        fenced = events(cloud, "a", "FENCED: domain destroyed")
        assert [e["vm"] for e in fenced] == ["fence-on"]
        # Host b reads a as Down once a's file is more than 6 s old (fencing came first).
        with trio.fail_after(5):
            while True:
                down = await cloud.ask("b", about(a.ip))
                if verdict_for(about(a.ip), down).read["status"] == "Down":
                    break
                await trio.sleep(0.2)
    finally:
        a.check(["umount", hb_dir])
    # The storage is back: the heartbeat with it, and b reads a as Up again.
    with trio.fail_after(10):
        while not events(cloud, "a", "heartbeat written again"):
            await trio.sleep(0.2)
    up = await cloud.ask("b", about(a.ip))
    assert verdict_for(about(a.ip), up).read["status"] == "Up"
    assert a.domain_state("fence-off") == "running"
    _remove_vms(lab, "fence-on", "fence-off")
    a.run(["rm", "-f", on_disk, off_disk], check=True)


async def test_an_nfs_pool_is_mounted_by_libvirt_at_mnt_uuid(cloud: Cloud, lab: Lab) -> None:
    # There is no NFS client in this kernel: libvirt runs the mount and it fails, which shows
    # what a host with one would mount, and that nothing is left behind.
    b = lab.hosts["b"]
    nfs = ModifyStoragePoolCommand(
        add=True,
        pool=StorageFilerTO(
            id=2,
            uuid=NFS_UUID,
            host=b.ip,
            path="/export/primary/",
            type=StoragePoolType.NETWORK_FILESYSTEM,
        ),
        local_path="/mnt//lab-nfs",
        details={"nfsmountopts": "vers=4.1, nconnect=4"},
    )
    answer = await cloud.ask("a", nfs)
    assert not getattr(answer, "result", True)
    details = getattr(answer, "details", "") or ""
    # libvirt's own command line, options as the Java agent passes them (nfsmountopts
    # without whitespace, after libvirt's nodev,nosuid,noexec), no -t: the netfs default.
    mount = f"mount -o nodev,nosuid,noexec,vers=4.1,nconnect=4 {b.ip}:/export/primary"
    assert f"{mount} /mnt/{NFS_UUID})" in details, details
    assert "unknown filesystem type 'nfs'" in details
    assert "check that" in details  # what to check, after libvirt's own words
    assert verdict_for(nfs, answer).host_effect is HostEffect.ALERT
    done = lab.hosts["a"].run(
        ["virsh", "-c", "qemu:///system", "pool-info", NFS_UUID], capture_output=True, text=True
    )
    assert done.returncode != 0  # no half-made pool left in libvirt
    assert lab.hosts["a"].run(["test", "-e", f"/mnt/{NFS_UUID}"]).returncode == 1  # nor its dir
