"""The two-host lab: real libvirtds in namespaces, a live migration seen on the wire.

The migration tests check what migration.md measured: guest memory crosses a plain
``virsh migrate --p2p`` in clear (the marker shows up in the capture), and does not with
QEMU's native TLS (``--tls``). They share the session's lab (tests/conftest_lab.py).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from agent.certs.dhparams import FFDHE3072_PEM
from lab.hosts import Lab, LabHost, count_marker, teardown_all
from lab.netns import NS_DIR, alive, lab_links, lab_mounts, lab_netns, netns_pids
from lab.storage import SHARED_POOL_PATH
from tests.test_lab_reaper import parent_of

# Every test here takes the session's `lab` fixture, which skips, or fails in CI, when the
# lab cannot run on this machine.
pytestmark = pytest.mark.lab

GUEST = "guest1"
MIGRATE = ("migrate", "--live", "--p2p", "--persistent", "--undefinesource")


def guest_on(lab: Lab, name: str) -> LabHost:
    """The host ``name`` with the guest running, RAM filled; undefined everywhere else."""
    host = lab.hosts[name]
    for other in lab.hosts.values():
        if other is not host and (state := other.domain_state(GUEST)) is not None:
            if state != "shut off":
                other.virsh("destroy", GUEST)
            other.virsh("undefine", GUEST)
    if host.domain_state(GUEST) is None:
        host.define_guest(GUEST)
    host.wait_guest_filled(GUEST)
    return host


def test_both_libvirtds_answer(lab: Lab) -> None:
    for host in lab.hosts.values():
        assert host.libvirtd_running()
        assert host.virsh("hostname") == host.name
        assert host.run(["hostname"], capture_output=True, text=True).stdout.strip() == host.name


def test_hosts_have_their_own_identity_and_pki(lab: Lab) -> None:
    uuids = set()
    for host in lab.hosts.values():
        uuids.add(host.virsh("capabilities").split("<uuid>")[1][:36])
        assert (host.cert_dir / "cloud.key").stat().st_mode & 0o777 == 0o600
        for path, target in (
            ("/etc/pki/CA/cacert.pem", "cloud.ca.crt"),
            ("/etc/pki/libvirt/private/serverkey.pem", "cloud.key"),
            ("/etc/pki/qemu/client-cert.pem", "cloud.crt"),
        ):
            assert host.outside(path).resolve() == host.cert_dir / target
        assert host.outside("/etc/pki/qemu/dh-params.pem").read_bytes() == FFDHE3072_PEM
        hosts = host.run(["cat", "/etc/hosts"], capture_output=True, text=True).stdout
        assert all(f"{peer.ip}\t{peer.name}" in hosts for peer in lab.hosts.values())
    # libvirt refuses to migrate to a host with its own UUID.
    assert len(uuids) == len(lab.hosts)


# The ports CloudStack's Java agent takes for a bridge's physical uplink (CheckNetworkCommand).
PHYSICAL = re.compile(r"(eth|bond|vlan|vx|em|ens|eno|enp|team|enx|dummy|lo|p\d+p\d+)")


def test_hosts_are_wired_like_cloudstack_kvm_hosts(lab: Lab) -> None:
    """cloudbr0 holds the host's IP and enslaves eth0, the veth to the other host; the host's
    /sys is its own network namespace's, where the Java agent's checks look."""
    for host in lab.hosts.values():
        assert (host.bridge, host.veth) == ("cloudbr0", "eth0")
        ports = host.check(["ls", f"/sys/devices/virtual/net/{host.bridge}/brif"]).split()
        assert host.veth in ports and PHYSICAL.match(host.veth)
        links = json.loads(host.check(["ip", "-j", "addr", "show"]))
        by_name = {link["ifname"]: link for link in links}
        assert set(host.check(["ls", "/sys/class/net"]).split()) == set(by_name)
        addresses = {n: [a["local"] for a in link["addr_info"]] for n, link in by_name.items()}
        assert host.ip in addresses[host.bridge]
        assert not any(host.ip in found for n, found in addresses.items() if n != host.bridge)
        assert by_name[host.veth]["master"] == host.bridge
        # Fixed, so a VM tap joining the bridge never changes its MAC.
        assert by_name[host.bridge]["address"] == by_name[host.veth]["address"]
        assert host.check(["cat", f"/sys/class/net/{host.bridge}/addr_assign_type"]) == "3"
    a, b = lab.hosts["a"], lab.hosts["b"]
    assert a.virsh("hostname", uri=b.uri) == "b"  # through both bridges


def test_remote_libvirtd_over_tcp_and_tls(lab: Lab) -> None:
    a, b = lab.hosts["a"], lab.hosts["b"]
    assert a.virsh("hostname", uri=b.uri) == "b"
    assert a.virsh("hostname", uri=b.tls_uri) == "b"
    assert b.virsh("hostname", uri=a.tls_uri) == "a"


def test_restart_libvirtd(lab: Lab) -> None:
    b = lab.hosts["b"]
    b.restart_libvirtd()
    assert b.libvirtd_running()
    assert lab.hosts["a"].virsh("hostname", uri=b.uri) == "b"


def test_daemons_and_guests_are_children_of_the_labs_reaper(lab: Lab) -> None:
    """Orphaned QEMUs come to the lab's subreaper, which reaps them at once (this machine's
    PID 1 took 1.6-1.8 s, and libvirt waits for the source QEMU to vanish at the end of
    every migration)."""
    host = guest_on(lab, "a")
    assert lab.reaper is not None
    reaper = lab.reaper.proc.pid
    for each in lab.hosts.values():
        for daemon in ("libvirtd", "virtlogd"):
            assert parent_of(int((each.root / f"{daemon}.pid").read_text())) == reaper
    pid_file = f"/run/libvirt/qemu/{GUEST}.pid"
    qemu = int(host.run(["cat", pid_file], capture_output=True, text=True, check=True).stdout)
    assert host.ns.holds(qemu)
    assert parent_of(qemu) == reaper


def test_plain_migration_carries_guest_memory_in_clear(lab: Lab, tmp_path: Path) -> None:
    a, b = guest_on(lab, "a"), lab.hosts["b"]
    pcap = tmp_path / "tcp.pcap"
    with lab.capture("a", pcap) as cap:
        t0 = time.monotonic()
        a.virsh(*MIGRATE, GUEST, b.uri)
        seconds = time.monotonic() - t0
    markers = count_marker(pcap)
    pcap.unlink()
    print(f"tcp migration: {seconds:.2f} s, {cap.packets} packets, {markers} markers")
    assert (a.domain_state(GUEST), b.domain_state(GUEST)) == (None, "running")
    b.wait_guest_filled(GUEST, timeout=10)  # it runs there, RAM still full
    assert markers > 1000


def test_native_tls_migration_hides_guest_memory(lab: Lab, tmp_path: Path) -> None:
    a, b = lab.hosts["a"], guest_on(lab, "b")
    pcap = tmp_path / "tls.pcap"
    with lab.capture("b", pcap) as cap:
        t0 = time.monotonic()
        b.virsh(*MIGRATE, "--tls", GUEST, a.tls_uri)
        seconds = time.monotonic() - t0
    size = pcap.stat().st_size
    markers = count_marker(pcap)
    pcap.unlink()
    print(f"native TLS migration: {seconds:.2f} s, {cap.packets} packets, {markers} markers")
    assert (a.domain_state(GUEST), b.domain_state(GUEST)) == ("running", None)
    a.wait_guest_filled(GUEST, timeout=10)
    # The capture did hold the migration (96 MiB of filled RAM), yet no marker.
    assert size > 96 << 20
    assert markers == 0


def with_everything_running(lab: Lab) -> set[int]:
    """A disk guest on the shared pool with a NIC on cloudbr0 (taps, pool mounts in use,
    libvirtds with the shim); the pids in the lab's namespaces."""
    a = lab.hosts["a"]
    a.remove_domain("leftover")
    disk = a.create_overlay(f"{SHARED_POOL_PATH}/leftover-root", lab.place_template())
    a.define_disk_guest("leftover", disk, bridge=a.bridge)
    a.wait_guest_filled("leftover")
    return {pid for net in lab_netns() for pid in netns_pids(net)}


def shim_users() -> list[int]:
    """Processes with the lab's clusterfs shim loaded."""
    users = []
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            if "libkvmlab-clusterfs" in maps.read_text():
                users.append(int(maps.parent.name))
        except OSError:
            pass
    return users


def pool_mounts() -> list[int]:
    """Processes whose mount namespace has the shared pool mounted."""
    found = []
    for info in Path("/proc").glob("[0-9]*/mountinfo"):
        try:
            lines = info.read_text().splitlines()
        except OSError:
            continue
        if any(line.split()[4] == SHARED_POOL_PATH for line in lines):
            found.append(int(info.parent.name))
    return found


def assert_nothing_left(lab: Lab, pids: set[int], marks: dict[str, bool]) -> None:
    assert lab_netns() == []  # and the bridges, veths and taps inside them
    assert lab_links() == []
    assert lab_mounts() == []
    assert not NS_DIR.exists()
    assert not any(alive(pid) for pid in pids)
    assert shim_users() == []
    assert pool_mounts() == []
    assert not (lab.workdir / "hosts").exists()
    assert not lab.shared_pool_dir.exists()
    assert not (lab.workdir / "reaper.pid").exists()
    if marks["created-etc-pki"]:
        assert not os.path.exists("/etc/pki")
    if marks["created-shared-pool-mount-point"]:
        assert not os.path.exists(SHARED_POOL_PATH)
    # The build caches stay: the next run starts warm.
    assert (lab.workdir / "guest").is_dir() and lab.cluster_fs_shim is not None
    assert lab.cluster_fs_shim.exists()


def lab_marks(lab: Lab) -> dict[str, bool]:
    names = ("created-etc-pki", "created-shared-pool-mount-point")
    return {name: (lab.workdir / name).exists() for name in names}


def test_teardown_all_leaves_nothing_and_can_repeat(lab: Lab) -> None:
    pids = with_everything_running(lab)
    assert len(pids) >= 5  # two libvirtd, two virtlogd, the guest's QEMU
    assert len(shim_users()) == 2 and len(pool_mounts()) >= 5
    marks = lab_marks(lab)
    assert lab.reaper is not None
    reaper = lab.reaper.proc.pid
    for _ in range(2):
        teardown_all(lab.workdir)
        assert not alive(reaper)
        assert_nothing_left(lab, pids, marks)
    # Later tests (other modules too) get the session's lab back.
    lab.rebuild()
    assert all(host.virsh("hostname") == host.name for host in lab.hosts.values())


def test_teardown_all_after_a_crashed_run(lab: Lab) -> None:
    """The runner and its reaper died (SIGKILL): the daemons and the QEMU live on, orphaned
    to PID 1; a later teardown_all, which knows nothing of that run, removes it all."""
    pids = with_everything_running(lab)
    marks = lab_marks(lab)
    assert lab.reaper is not None
    reaper = lab.reaper.proc.pid
    os.kill(reaper, signal.SIGKILL)
    lab.reaper.proc.wait()
    assert all(alive(pid) for pid in pids)
    teardown_all(lab.workdir)
    assert_nothing_left(lab, pids, marks)
    lab.rebuild()
    assert all(host.virsh("hostname") == host.name for host in lab.hosts.values())
