"""A VM as CloudStack drives it, on the two-host lab: started through StartCommand, migrated
A -> B through the MS's sequence (PrepareForMigration, Migrate over QEMU native TLS,
CheckVirtualMachine), stopped through StopCommand; and a storage migration whose disk
data crosses the wire inside the same native TLS. Every answer is judged by what a 4.21 MS
does with it (lab.ms_side); every capture that finds 0 markers is backed by one of the same
VM over plain qemu+tcp that finds them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from lab.bootdisk import DISK_MARKER, VIRTUAL_SIZE, disk_domain_xml
from lab.ca import LAB_CA_DIRNAME, LabCA
from lab.cloud import GUID_SUFFIX
from lab.cloud import LabCloud as Cloud
from lab.cloudvm import clone_command, delete_command, vm_to, wait_ram_filled
from lab.hosts import Lab, LabHost, count_marker
from lab.ms_side import verdict_for
from lab.storage import LOCAL_IMAGES, SHARED_POOL_PATH
from protocol.messages.volumes import CopyCmdAnswer
from tests.conftest_lab import LAB_DIR

pytestmark = pytest.mark.lab
VM = "i-2-77-VM"
VOL = "7c5e9a41-0000-4000-8000-00000000a077"
LOCAL_VM = "i-2-78-VM"
STOP_TIMEOUT = "stop.script.timeout=3"
MiB = 1 << 20

VM_TO = vm_to(VM, VOL)


@pytest.fixture(scope="module")
def cloud(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    """The lab MS with the lab zone (the shared pool attached on both hosts), both agents
    Up and secured by in-band provisioning."""
    for host in lab.hosts.values():
        for name in (VM, LOCAL_VM):
            host.remove_domain(name)
    c = Cloud(lab, tmp_path_factory.mktemp("cloud-vm"), LabCA.load(LAB_DIR / LAB_CA_DIRNAME))
    try:
        c.start_ms("ms1", "a")
        # The marker guest ignores ACPI: a StopCommand's graceful wait would be all of it.
        c.start_agent("a", STOP_TIMEOUT)
        c.start_agent("b", STOP_TIMEOUT)

        async def secure() -> None:
            for name in ("a", "b"):
                await c.wait_host(name, timeout=60)
            for name in ("a", "b"):
                answer = await c.provision(name)
                assert answer["result"], answer
            for name in ("a", "b"):
                await c.wait_host(name, secured=True, timeout=60)

        trio.run(secure)
        yield c
    finally:
        c.close()
        lab.rebuild()  # the agents re-linked the hosts' PKI: the next module gets the lab back


def _defined(host: LabHost, name: str) -> bool:
    return name in host.virsh("list", "--all", "--name").split()


def _persistent(host: LabHost, name: str) -> bool:
    return "Persistent:     yes" in host.virsh("dominfo", name)


async def _vms_in_ping(cloud: Cloud, name: str, vm: str, present: bool) -> None:
    """Until host ``name``'s last ping lists ``vm`` (or no longer does)."""
    with trio.fail_after(30):
        while (vm in (await cloud.hosts())[name]["vms"]) != present:
            await trio.sleep(0.2)


async def test_start_migrate_over_native_tls_check_stop(
    cloud: Cloud, lab: Lab, tmp_path: Path
) -> None:
    a, b = lab.hosts["a"], lab.hosts["b"]
    # The ROOT volume: the MS clones the template on the shared pool (CopyCommand, on A).
    await trio.to_thread.run_sync(lab.place_template)
    a.run(["rm", "-f", f"{SHARED_POOL_PATH}/{VOL}"], check=True)
    clone = clone_command(VM, VOL)
    copied = await cloud.ask("a", clone)
    verdict = verdict_for(clone, copied)
    assert isinstance(copied, CopyCmdAnswer) and verdict.ok, (verdict.reason, copied)
    assert verdict.read["path"] == VOL  # what the MS stores as the volume's path

    start = {"com.cloud.agent.api.StartCommand": {"vm": VM_TO, "hostIp": a.ip}}
    started = await cloud.send("a", start)
    assert started["result"], started
    assert a.domain_state(VM) == "running" and not _persistent(a, VM)
    filled = await trio.to_thread.run_sync(wait_ram_filled, a, VM)  # booted from the volume
    print(f"{VM} booted from its volume and filled its RAM in {filled:.1f} s")
    await _vms_in_ping(cloud, "a", VM, present=True)

    pcap = tmp_path / "tls.pcap"
    with lab.capture("a", pcap) as cap:
        reply = await cloud.migrate(VM, "a", "b", timeout=300, vm_to=VM_TO)
    steps = [(s["command"], s["host"].removesuffix(GUID_SUFFIX), s["ok"]) for s in reply["steps"]]
    assert steps == [
        ("PrepareForMigrationCommand", "b", True),
        ("MigrateCommand", "a", True),
        ("CheckVirtualMachineCommand", "b", True),
    ], reply
    assert reply["migrated"] is True
    prepared, migrated, checked = reply["steps"]
    assert prepared["answer"] == "PrepareForMigrationAnswer"
    shares = prepared["read"]["newVmCpuShares"]
    assert isinstance(shares, int) and shares > 0
    assert migrated["answer"] == "MigrateAnswer"
    assert checked["answer"] == "CheckVirtualMachineAnswer"
    assert checked["read"]["state"] == "PowerOn"

    # On B, transient, VNC listening on B, the shares B computed; nothing left on A.
    assert b.domain_state(VM) == "running" and not _persistent(b, VM)
    assert not _defined(a, VM)
    xml = b.virsh("dumpxml", VM)
    assert f"listen='{b.ip}'" in xml and a.ip not in xml
    if "<shares>" in xml:  # the lab's libvirtd may have no cpu cgroup controller
        assert f"<shares>{shares}</shares>" in xml
    migrate_lines = [e for e in cloud.log_events("a") if e["event"] == "migration started"]
    assert migrate_lines[-1]["native_tls"] is True
    assert migrate_lines[-1]["uri"] == f"qemu+tls://{b.ip}/system"

    # The wire: the migration crossed it (128 MiB of RAM), not one marker in clear.
    assert (cap.packets or 0) > 1000
    assert await trio.to_thread.run_sync(count_marker, pcap) == 0
    assert await trio.to_thread.run_sync(count_marker, pcap, DISK_MARKER) == 0

    # A's ping no longer lists it; B's does.
    await _vms_in_ping(cloud, "a", VM, present=False)
    await _vms_in_ping(cloud, "b", VM, present=True)

    # The same VM back to A over plain qemu+tcp (no native TLS), by hand: this capture sees
    # the markers, so the 0 above is not a capture that sees nothing.
    # (Its VNC listens on B's address: as the agent does, the XML given says A's.)
    back = b.root / f"{VM}-to-a.xml"
    back.write_text(b.virsh("dumpxml", "--migratable", VM).replace(f"'{b.ip}'", f"'{a.ip}'"))
    plain = tmp_path / "tcp.pcap"
    with lab.capture("b", plain):
        await trio.to_thread.run_sync(
            lambda: b.virsh(
                "migrate", "--live", "--p2p", "--xml", str(back), VM, a.uri, timeout=300
            )
        )
    assert await trio.to_thread.run_sync(count_marker, plain) > 1000
    assert not _defined(b, VM) and not _persistent(a, VM)

    stopped = await cloud.send("a", {"com.cloud.agent.api.StopCommand": {"vmName": VM}})
    assert stopped["result"], stopped
    assert not _defined(a, VM) and not _defined(b, VM)
    await _vms_in_ping(cloud, "a", VM, present=False)

    # The MS expunges the volume (DeleteCommand, through any host of the pool).
    delete = delete_command(VM, VOL)
    deleted = await cloud.ask("b", delete)
    assert verdict_for(delete, deleted).ok, deleted
    assert a.run(["test", "-e", f"{SHARED_POOL_PATH}/{VOL}"]).returncode == 1


def _local_vm_on(lab: Lab, host: LabHost) -> str:
    """A transient VM (as CloudStack's) booting the marker guest from a disk in the host's
    own LOCAL_IMAGES (not shared), its RAM filled; the disk's path."""
    disk = f"{LOCAL_IMAGES}/{LOCAL_VM}-root"
    host.run(["rm", "-f", disk], check=True)
    host.create_overlay(disk, lab.place_template())
    xml = disk_domain_xml(LOCAL_VM, disk, serial_log=host.serial_log(LOCAL_VM))
    path = host.root / f"{LOCAL_VM}.xml"
    path.write_text(xml)
    host.virsh("create", str(path))
    host.wait_guest_filled(LOCAL_VM)
    return disk


def _fresh_disk(host: LabHost, disk: str) -> None:
    """The destination's empty copy, which QEMU fills over NBD."""
    host.run(["rm", "-f", disk], check=True)
    host.create_disk(disk, VIRTUAL_SIZE)


async def test_storage_migration_carries_the_disk_inside_native_tls(
    cloud: Cloud, lab: Lab, tmp_path: Path
) -> None:
    a, b = lab.hosts["a"], lab.hosts["b"]
    disk = await trio.to_thread.run_sync(_local_vm_on, lab, a)
    _fresh_disk(b, disk)
    # As KvmNonManagedStorageDataMotionStrategy fills it: the key is the source volume.
    info = {
        "serialNumber": f"{LOCAL_VM}-root",
        "diskType": "FILE",
        "driverType": "QCOW2",
        "source": "FILE",
        "sourceText": disk,
        "isSourceDiskOnStorageFileSystem": True,
    }
    tls = tmp_path / "storage-tls.pcap"
    with lab.capture("a", tls) as cap:
        reply = await cloud.migrate(
            LOCAL_VM, "a", "b", timeout=300, storage={f"{LOCAL_VM}-root": info}
        )
    assert reply["migrated"] is True, reply
    answer = reply["answer"]["com.cloud.agent.api.MigrateAnswer"]
    assert answer["result"], answer
    assert b.domain_state(LOCAL_VM) == "running" and not _defined(a, LOCAL_VM)
    await trio.to_thread.run_sync(lambda: b.wait_guest_filled(LOCAL_VM, 30))
    started = [e for e in cloud.log_events("a") if e["event"] == "migration started"][-1]
    assert started["native_tls"] is True and started["storage"] == [f"{LOCAL_VM}-root"]
    ram = await trio.to_thread.run_sync(count_marker, tls)
    on_disk = await trio.to_thread.run_sync(count_marker, tls, DISK_MARKER)
    print(f"storage migration over native TLS: {cap.packets} packets, {ram} RAM, {on_disk} disk")
    # The guest's RAM (96 MiB filled) and the disk's 8 MiB of data crossed this wire...
    assert tls.stat().st_size > 96 * MiB
    # ...and not one marker of either in clear.
    assert (ram, on_disk) == (0, 0)

    # The same VM back over plain qemu+tcp (no native TLS): the markers are on the wire.
    _fresh_disk(a, disk)
    plain = tmp_path / "storage-tcp.pcap"
    with lab.capture("b", plain):
        await trio.to_thread.run_sync(
            lambda: b.virsh(
                "migrate", "--live", "--p2p", "--copy-storage-all", LOCAL_VM, a.uri, timeout=300
            )
        )
    assert a.domain_state(LOCAL_VM) == "running" and not _defined(b, LOCAL_VM)
    ram = await trio.to_thread.run_sync(count_marker, plain)
    on_disk = await trio.to_thread.run_sync(count_marker, plain, DISK_MARKER)
    print(f"the same over qemu+tcp: {ram} RAM markers, {on_disk} disk markers")
    assert ram > 1000 and on_disk > 1000
    a.remove_domain(LOCAL_VM)
    for host in (a, b):
        host.run(["rm", "-f", disk], check=True)
