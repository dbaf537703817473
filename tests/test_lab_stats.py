"""The statistics commands on a real hypervisor host: the lab MS and the agent process inside
host a, a VM booting from a qcow2 overlay on the shared pool with a NIC on cloudbr0.

The figures are checked against what the host really has (the kernel's meminfo and counters,
``virsh dominfo``, ``qemu-img info``, ``stat``), the counters against I/O the VM really does
(its BIOS reads the disk to boot; frames sent on the bridge reach its NIC), every answer
against the MS's verdict; and the pings keep coming while a statistics call hangs on a
stopped QEMU.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import uuid
from collections.abc import Iterator

import pytest
import trio

from lab.ca import LAB_CA_DIRNAME, LabCA
from lab.cloud import LabCloud
from lab.hosts import Lab, LabHost
from lab.ms_side import verdict_for
from lab.storage import SHARED_POOL_PATH, SHARED_POOL_UUID
from protocol.messages.enums import StoragePoolType
from protocol.messages.stats import (
    GetHostStatsAnswer,
    GetHostStatsCommand,
    GetVmDiskStatsAnswer,
    GetVmDiskStatsCommand,
    GetVmNetworkStatsAnswer,
    GetVmNetworkStatsCommand,
    GetVmStatsAnswer,
    GetVmStatsCommand,
    GetVolumeStatsAnswer,
    GetVolumeStatsCommand,
)
from protocol.model import Command, Message
from tests.conftest_lab import LAB_DIR

pytestmark = pytest.mark.lab
VM = "i-2-71-VM"
VOLUME = str(uuid.uuid5(uuid.NAMESPACE_URL, "kvmlab:volume:stats-root"))
PING_INTERVAL = 1
FRAMES, FRAME_BYTES = 2000, 1000


@pytest.fixture(scope="module")
def cloud(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabCloud]:
    c = LabCloud(lab, tmp_path_factory.mktemp("cloud"), LabCA.load(LAB_DIR / LAB_CA_DIRNAME))
    host = lab.hosts["a"]
    defined_pool = _ensure_pool(host)
    try:
        c.start_ms("ms1", "a", ping_interval=PING_INTERVAL)
        c.start_agent("a")
        yield c
    finally:
        c.close()
        for each in lab.hosts.values():
            each.remove_domain(VM)
        host.run(["rm", "-f", f"{SHARED_POOL_PATH}/{VOLUME}"])
        if defined_pool:
            host.run(["virsh", "-c", "qemu:///system", "pool-destroy", SHARED_POOL_UUID])
            host.run(["virsh", "-c", "qemu:///system", "pool-undefine", SHARED_POOL_UUID])


def _ensure_pool(host: LabHost) -> bool:
    """The shared pool as ModifyStoragePoolCommand leaves it (a dir pool named by its UUID
    at its path); True if this module defined it."""
    if host.run(["virsh", "-c", "qemu:///system", "pool-info", SHARED_POOL_UUID]).returncode == 0:
        host.run(["virsh", "-c", "qemu:///system", "pool-start", SHARED_POOL_UUID])
        return False
    xml = host.root / "stats-pool.xml"
    xml.write_text(
        f"<pool type='dir'><name>{SHARED_POOL_UUID}</name><uuid>{SHARED_POOL_UUID}</uuid>"
        f"<target><path>{SHARED_POOL_PATH}</path></target></pool>"
    )
    host.virsh("pool-define", str(xml))
    host.virsh("pool-start", SHARED_POOL_UUID)
    return True


async def ask(cloud: LabCloud, command: Command, timeout: float = 60) -> Message:
    answer = await cloud.ask("a", command, timeout=timeout)
    verdict = verdict_for(command, answer)
    assert verdict.ok, f"{type(command).__name__}: {verdict.reason}"
    return answer


def _counter(host: LabHost, device: str, name: str) -> int:
    return int(host.check(["cat", f"/sys/class/net/{device}/statistics/{name}"]))


_SEND_FRAMES = """
import socket, sys
frames, size = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("cloudbr0", 0))
src = open("/sys/class/net/cloudbr0/address").read().strip()
frame = b"\\xff" * 6 + bytes.fromhex(src.replace(":", "")) + b"\\x88\\xb5"
frame += b"\\0" * (size - len(frame))
for _ in range(frames):
    s.send(frame)
"""


def _send_broadcast_frames(host: LabHost) -> int:
    """Broadcast Ethernet frames (a local-experimental ethertype) sent on the host's bridge:
    the bridge floods them to every port, the VM's tap included. Bytes sent."""
    host.check(["python3", "-c", _SEND_FRAMES, str(FRAMES), str(FRAME_BYTES)])
    return FRAMES * FRAME_BYTES


def _start_vm_paused(lab: Lab) -> LabHost:
    host = lab.hosts["a"]
    for each in lab.hosts.values():
        each.remove_domain(VM)
    disk = f"{SHARED_POOL_PATH}/{VOLUME}"
    host.run(["rm", "-f", disk])
    host.create_overlay(disk, lab.place_template())
    host.define_disk_guest(VM, disk, bridge=host.bridge, start=False)
    host.virsh("start", "--paused", VM)  # before its BIOS reads anything
    return host


async def test_statistics_match_the_host_and_move_with_the_vm(lab: Lab, cloud: LabCloud) -> None:
    await cloud.wait_host("a", timeout=60)
    host = _start_vm_paused(lab)
    names = [VM]
    vm0 = await ask(cloud, GetVmStatsCommand(vm_names=names, host_name="a"))
    disk0 = await ask(cloud, GetVmDiskStatsCommand(vm_names=names, host_name="a"))
    nic0 = await ask(cloud, GetVmNetworkStatsCommand(vm_names=names, host_name="a"))

    host.virsh("resume", VM)
    await trio.to_thread.run_sync(host.wait_guest_filled, VM)  # booted from its disk
    tap = host.virsh("domiflist", VM).splitlines()[-1].split()[0]
    tap_before = _counter(host, tap, "tx_bytes"), _counter(host, tap, "rx_bytes")
    host0 = await ask(cloud, GetHostStatsCommand(host_id=1, host_name="a"))
    sent = _send_broadcast_frames(host)
    vm1 = await ask(cloud, GetVmStatsCommand(vm_names=names, host_name="a"))
    disk1 = await ask(cloud, GetVmDiskStatsCommand(vm_names=names, host_name="a"))
    nic1 = await ask(cloud, GetVmNetworkStatsCommand(vm_names=names, host_name="a"))
    tap_after = _counter(host, tap, "tx_bytes"), _counter(host, tap, "rx_bytes")

    # --- GetVmStats: memory and vCPUs as libvirt has them; changes over the interval.
    assert isinstance(vm0, GetVmStatsAnswer) and isinstance(vm1, GetVmStatsAnswer)
    assert vm0.vm_stats_map is not None and vm1.vm_stats_map is not None
    info = dict(
        (k.strip(), v.strip())
        for k, _, v in (line.partition(":") for line in host.virsh("dominfo", VM).splitlines())
    )
    entry = vm1.vm_stats_map[VM]
    assert entry.num_cpus == int(info["CPU(s)"]) == 1
    assert entry.memory_kbs == int(info["Max memory"].split()[0]) == 128 * 1024
    assert entry.target_memory_kbs == int(info["Used memory"].split()[0])
    assert entry.int_free_memory_kbs == -1  # <memballoon model='none'/>: no guest figures
    assert vm0.vm_stats_map[VM].disk_read_ios == 0  # the first sample
    assert entry.cpu_utilization > 0  # the guest fills its RAM under TCG
    assert entry.disk_read_ios > 0 and entry.disk_read_kbs > 0  # its BIOS read the disk
    assert entry.network_read_kbs >= 0 and entry.network_write_kbs >= 0

    # --- GetVmDiskStats: cumulative counters of the volume, the change since the last call.
    assert isinstance(disk0, GetVmDiskStatsAnswer) and isinstance(disk1, GetVmDiskStatsAnswer)
    assert disk1.host_name == "a"
    assert disk0.vm_disk_stats_map is not None and disk1.vm_disk_stats_map is not None
    (before,) = disk0.vm_disk_stats_map[VM]
    (after,) = disk1.vm_disk_stats_map[VM]
    assert before.path == after.path == VOLUME  # /mnt/<pool>/<volume> -> the volume's path
    assert after.io_read > before.io_read and after.bytes_read > before.bytes_read
    assert after.delta_io_read == after.io_read - before.io_read
    assert after.delta_bytes_read == after.bytes_read - before.bytes_read
    blk = host.virsh("domblkstat", VM, "vda")
    rd_req = int(next(w.split()[-1] for w in blk.splitlines() if "rd_req" in w))
    assert after.io_read <= rd_req  # libvirt's own counter, read after ours

    # --- GetVmNetworkStats: per NIC, cumulative bytes as the guest sees them: what the
    # host's end of its tap sent is what the guest received. (The lab guest has no NIC
    # driver: QEMU never takes the frames, the tap drops them, so these counters barely
    # move; the test driver's moving counters are tests/test_stats.py's.)
    assert isinstance(nic0, GetVmNetworkStatsAnswer) and isinstance(nic1, GetVmNetworkStatsAnswer)
    assert nic0.vm_network_stats_map is not None and nic1.vm_network_stats_map is not None
    (n0,), (n1,) = nic0.vm_network_stats_map[VM], nic1.vm_network_stats_map[VM]
    mac = host.virsh("domiflist", VM).splitlines()[-1].split()[-1]
    assert n1.mac_address == mac and n1.vm_name == VM
    assert tap_before[0] <= n1.bytes_received <= tap_after[0]
    assert tap_before[1] <= n1.bytes_sent <= tap_after[1]
    assert n0.bytes_received <= n1.bytes_received and n0.bytes_sent <= n1.bytes_sent
    assert entry.network_read_kbs * 1024 <= n1.bytes_received

    # --- GetVolumeStats: the volume as qemu-img and the filesystem see it (within 1 %).
    volumes = await ask(
        cloud,
        GetVolumeStatsCommand(
            volume_uuids=[VOLUME],
            pool_uuid=SHARED_POOL_UUID,
            pool_type=StoragePoolType.SHARED_MOUNT_POINT,
        ),
    )
    assert isinstance(volumes, GetVolumeStatsAnswer) and volumes.volume_stats is not None
    size = volumes.volume_stats[VOLUME]
    image = json.loads(
        host.check(["qemu-img", "info", "-U", "--output=json", f"{SHARED_POOL_PATH}/{VOLUME}"])
    )
    allocated = os.stat(lab.shared_pool_dir / VOLUME).st_blocks * 512
    assert size.virtual_size == pytest.approx(image["virtual-size"], rel=0.01)
    assert size.physical_size == pytest.approx(allocated, rel=0.01)

    # --- GetHostStats: the kernel's memory, the bridge's counters (cumulative KiB).
    rx0, tx0 = _counter(host, "cloudbr0", "rx_bytes"), _counter(host, "cloudbr0", "tx_bytes")
    stats = await ask(cloud, GetHostStatsCommand(host_id=1, host_name="a"))
    rx1, tx1 = _counter(host, "cloudbr0", "rx_bytes"), _counter(host, "cloudbr0", "tx_bytes")
    assert isinstance(stats, GetHostStatsAnswer) and stats.host_stats is not None
    figures = stats.host_stats
    meminfo = {
        line.split(":")[0]: int(line.split()[1])
        for line in host.check(["cat", "/proc/meminfo"]).splitlines()
    }
    assert figures.total_memory_kbs == meminfo["MemTotal"]
    assert 0 < figures.free_memory_kbs < figures.total_memory_kbs
    assert rx0 / 1024 <= figures.network_read_kbs <= rx1 / 1024
    assert tx0 / 1024 <= figures.network_write_kbs <= tx1 / 1024
    # The frames went out on cloudbr0, between the two calls.
    assert isinstance(host0, GetHostStatsAnswer) and host0.host_stats is not None
    assert figures.network_write_kbs - host0.host_stats.network_write_kbs >= sent / 1024
    assert 0 <= figures.cpu_utilization <= 100


async def test_pings_keep_coming_while_a_statistics_call_hangs_on_a_stopped_qemu(
    lab: Lab, cloud: LabCloud
) -> None:
    await cloud.wait_host("a", timeout=60)
    host = lab.hosts["a"]
    if host.domain_state(VM) != "running":
        host = _start_vm_paused(lab)
        host.virsh("resume", VM)
    qemu = int(host.check(["cat", f"/run/libvirt/qemu/{VM}.pid"]))
    seen: list[float] = []
    answers: list[Message] = []

    async def watch_pings() -> None:
        while True:
            last = (await cloud.hosts())["a"]["last_seen"]
            if not seen or last != seen[-1]:
                seen.append(last)
            await trio.sleep(0.1)

    async def stats_call() -> None:
        answers.append(await ask(cloud, GetVmDiskStatsCommand(vm_names=[VM], host_name="a")))

    os.kill(qemu, signal.SIGSTOP)  # its monitor stops answering: blockStats waits
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_pings)
            nursery.start_soon(stats_call)
            await trio.sleep(12 * PING_INTERVAL)  # more than two libvirtd keepalive periods
            assert not answers  # the call is still waiting for QEMU
            stuck_pings = list(seen)
            os.kill(qemu, signal.SIGCONT)
            with trio.fail_after(30):
                while not answers:
                    await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
    finally:
        os.kill(qemu, signal.SIGCONT)
    # While the call hung: a ping (and its VM report, from the same libvirtd) every interval.
    assert len(stuck_pings) >= 9, stuck_pings
    gaps = [b - a for a, b in itertools.pairwise(stuck_pings)]
    assert max(gaps) < 2.5 * PING_INTERVAL, gaps
    (answer,) = answers
    assert isinstance(answer, GetVmDiskStatsAnswer) and answer.vm_disk_stats_map is not None
    assert [d.path for d in answer.vm_disk_stats_map[VM]] == [VOLUME]
    assert (await cloud.hosts())["a"]["status"] == "Up"
