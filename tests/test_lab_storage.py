"""The lab's shared primary pool, the disk template and migrations of VMs booting from disks.

What issues 12 and 14 build on: one directory at /mnt/kvmlab-primary in both hosts; libvirtd
sees it as a cluster filesystem (the clusterfs shim), so a VM whose disk is there live-migrates
without --unsafe, and is refused without the shim or with its disk elsewhere; a VM boots the
marker guest from a qcow2 overlay on the template; a storage migration over plain TCP shows the
disk's own marker on the wire (so a TLS test that counts 0 is known not to be blind).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lab.bootdisk import DISK_MARKER, VIRTUAL_SIZE
from lab.hosts import Lab, LabError, LabHost, count_marker
from lab.netns import mount_points
from lab.storage import LOCAL_IMAGES, SHARED_POOL_PATH, TEMPLATE_UUID

pytestmark = pytest.mark.lab

VM = "disk1"
UNSAFE = "Migration without shared storage is unsafe"


def disk_guest_on(lab: Lab, name: str, *, shared: bool = True) -> LabHost:
    """The host ``name`` running VM from a fresh overlay of the template (on the shared pool,
    or in the host's own LOCAL_IMAGES), a NIC on cloudbr0, RAM filled; VM nowhere else."""
    host = lab.hosts[name]
    for each in lab.hosts.values():
        each.remove_domain(VM)
    template = lab.place_template()
    disk = f"{SHARED_POOL_PATH if shared else LOCAL_IMAGES}/{VM}-root"
    host.run(["rm", "-f", disk], check=True)
    host.create_overlay(disk, template)
    host.define_disk_guest(VM, disk, bridge=host.bridge)
    host.wait_guest_filled(VM)
    return host


def test_shared_pool_is_one_directory_at_the_same_path_in_both_hosts(lab: Lab) -> None:
    a, b = lab.hosts["a"], lab.hosts["b"]
    assert lab.shared_pool_path == SHARED_POOL_PATH == "/mnt/kvmlab-primary"
    name = f"probe-{os.getpid()}"
    path = f"{SHARED_POOL_PATH}/{name}"
    a.check(["sh", "-c", f"echo written-on-a > {path}"])
    assert b.check(["cat", path]) == "written-on-a"
    assert (lab.shared_pool_dir / name).read_text() == "written-on-a\n"
    assert a.outside(path) == b.outside(path) == lab.shared_pool_dir / name
    b.check(["rm", path])
    assert a.run(["test", "-e", path]).returncode == 1
    for host in (a, b):  # a bind mount in each host's mount namespace, not in the machine's
        mounts = host.check(["cat", "/proc/self/mountinfo"]).splitlines()
        assert [m.split()[4] for m in mounts].count(SHARED_POOL_PATH) == 1
    assert SHARED_POOL_PATH not in mount_points()
    # The hosts' own directories stay their own.
    a.check(["touch", f"{LOCAL_IMAGES}/{name}"])
    assert b.run(["test", "-e", f"{LOCAL_IMAGES}/{name}"]).returncode == 1
    a.check(["rm", f"{LOCAL_IMAGES}/{name}"])


def test_only_libvirtd_runs_with_the_clusterfs_shim(lab: Lab) -> None:
    assert lab.cluster_fs_shim is not None
    shim = str(lab.cluster_fs_shim)
    host = disk_guest_on(lab, "a")
    for each in lab.hosts.values():
        pid = each.daemons.pid("libvirtd")
        assert each.daemons.cluster_fs and pid is not None
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert f"LD_PRELOAD={shim}".encode() in environ
        assert f"KVMLAB_CLUSTER_FS={SHARED_POOL_PATH}".encode() in environ
        assert shim in Path(f"/proc/{pid}/maps").read_text()
        virtlogd = each.daemons.pid("virtlogd")
        assert shim not in Path(f"/proc/{virtlogd}/maps").read_text()
        # Anything else in the host sees the pool as what it is (ext4 here), not GFS2.
        assert each.check(["stat", "-f", "-c", "%t", SHARED_POOL_PATH]) != "1161970"
    qemu = int(host.check(["cat", f"/run/libvirt/qemu/{VM}.pid"]))
    assert shim not in Path(f"/proc/{qemu}/maps").read_text()
    assert b"LD_PRELOAD" not in Path(f"/proc/{qemu}/environ").read_bytes()
    host.remove_domain(VM)


def test_a_vm_boots_the_marker_guest_from_an_overlay_on_the_template(lab: Lab) -> None:
    a = disk_guest_on(lab, "a")
    assert lab.place_template() == f"{SHARED_POOL_PATH}/{TEMPLATE_UUID}"
    xml = a.virsh("dumpxml", VM)
    assert "<kernel>" not in xml and "cache='none'" in xml
    assert f"<source file='{SHARED_POOL_PATH}/{VM}-root'" in xml
    info = a.check(["qemu-img", "info", "-U", f"{SHARED_POOL_PATH}/{VM}-root"])  # in use
    assert f"backing file: {SHARED_POOL_PATH}/{TEMPLATE_UUID}" in info
    assert "backing file format: qcow2" in info
    # The NIC's tap joined cloudbr0 beside the uplink.
    ports = a.check(["ls", f"/sys/class/net/{a.bridge}/brif"]).split()
    assert a.veth in ports and any(p.startswith("vnet") for p in ports)
    a.remove_domain(VM)


def test_live_migration_with_the_disk_on_the_shared_pool_needs_no_unsafe_flag(
    lab: Lab, tmp_path: Path
) -> None:
    a, b = disk_guest_on(lab, "a"), lab.hosts["b"]
    pcap = tmp_path / "shared.pcap"
    with lab.capture("a", pcap):
        a.virsh("migrate", "--live", "--p2p", "--persistent", "--undefinesource", VM, b.uri)
    ram, disk = count_marker(pcap), count_marker(pcap, DISK_MARKER)
    pcap.unlink()
    print(f"shared-pool migration: {ram} RAM markers, {disk} disk markers")
    assert (a.domain_state(VM), b.domain_state(VM)) == (None, "running")
    b.wait_guest_filled(VM, timeout=20)
    ports = b.check(["ls", f"/sys/class/net/{b.bridge}/brif"]).split()
    assert any(p.startswith("vnet") for p in ports)  # plugged into B's cloudbr0
    assert ram > 1000  # guest memory crossed in clear...
    assert disk == 0  # ...the disk did not: it is the same file on B
    b.remove_domain(VM)


def test_without_the_shim_the_same_migration_is_refused_as_unsafe(lab: Lab) -> None:
    a, b = disk_guest_on(lab, "a"), lab.hosts["b"]
    a.restart_libvirtd(cluster_fs=False)
    try:
        assert not a.daemons.cluster_fs
        with pytest.raises(LabError, match=UNSAFE):
            a.virsh("migrate", "--live", "--p2p", VM, b.uri)
    finally:
        a.restart_libvirtd()
    assert (a.domain_state(VM), b.domain_state(VM)) == ("running", None)
    a.remove_domain(VM)


def test_a_disk_off_the_pool_is_refused_and_crosses_the_wire_with_copy_storage(
    lab: Lab, tmp_path: Path
) -> None:
    a, b = disk_guest_on(lab, "a", shared=False), lab.hosts["b"]
    disk = f"{LOCAL_IMAGES}/{VM}-root"
    with pytest.raises(LabError, match=UNSAFE):
        a.virsh("migrate", "--live", "--p2p", VM, b.uri)
    # The destination's own copy, which QEMU fills over NBD (plain TCP here).
    b.run(["rm", "-f", disk], check=True)
    b.create_disk(disk, VIRTUAL_SIZE)
    pcap = tmp_path / "storage.pcap"
    with lab.capture("a", pcap):
        a.virsh("migrate", "--live", "--p2p", "--copy-storage-all", VM, b.uri, timeout=300)
    ram, copied = count_marker(pcap), count_marker(pcap, DISK_MARKER)
    pcap.unlink()
    print(f"storage migration: {ram} RAM markers, {copied} disk markers")
    assert b.domain_state(VM) == "running"
    b.wait_guest_filled(VM, timeout=20)
    assert copied > 1000  # the template's data sectors, read through the overlay
    assert ram > 1000
    for host in (a, b):
        host.remove_domain(VM)
        host.run(["rm", "-f", disk], check=True)
