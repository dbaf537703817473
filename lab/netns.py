"""The namespaces of the lab hosts: making them, entering them, and sweeping them away.

Every lab object in the machine's own namespaces carries the fixed :data:`PREFIX` (network
namespaces ``kvmlab-<host>``, mount and UTS namespace files under ``/run/kvmlab``), so the
leftovers of a crashed run are found without any state of ours. Inside its network namespace
a host is wired like a CloudStack KVM host: the Linux bridge :data:`BRIDGE` (the default
traffic label) holds the host's IP and enslaves its uplink :data:`UPLINK`, one end of the veth
pair that joins the hosts; both die with the namespace.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

import structlog
from attrs import frozen

PREFIX: Final = "kvmlab"
NS_DIR: Final = Path("/run/kvmlab")
NETNS_DIR: Final = Path("/run/netns")
HOST_NAME: Final = re.compile(r"[a-z][a-z0-9]{0,6}")
# CloudStack's default traffic label. Its Java agent counts a bridge as present only with a
# "physical" port, one whose name starts with eth, bond, en... (never a vnet tap): the veth
# is that port, named so inside the namespace.
BRIDGE: Final = "cloudbr0"
UPLINK: Final = "eth0"

log = structlog.get_logger("lab.netns")


class LabError(RuntimeError):
    """A lab command failed; the message holds the command and what it printed."""


def env() -> dict[str, str]:
    """The environment of lab commands: the sbin directories on PATH (libvirtd, ip...) and
    messages in English (some are parsed)."""
    path = os.environ.get("PATH", "/usr/bin:/bin")
    extra = [d for d in ("/usr/local/sbin", "/usr/sbin", "/sbin") if d not in path.split(":")]
    return {**os.environ, "PATH": ":".join([path, *extra]), "LC_ALL": "C"}


def sh(argv: Sequence[str], *, check: bool = True, timeout: float = 60) -> str:
    """Run a command in the machine's own namespaces; its stdout, or LabError."""
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, check=False, env=env()
        )
    except subprocess.TimeoutExpired:
        raise LabError(f"{' '.join(argv)}: no answer within {timeout} s") from None
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


@frozen
class HostNamespaces:
    """The network, mount and UTS namespaces of one lab host."""

    host: str

    @property
    def net(self) -> str:
        return f"{PREFIX}-{self.host}"

    @property
    def veth(self) -> str:
        """The uplink: the host's end of the veth pair, a port of :attr:`bridge`."""
        return UPLINK

    @property
    def bridge(self) -> str:
        """The bridge that holds the host's IP and takes the VMs' NICs."""
        return BRIDGE

    @property
    def mnt_file(self) -> Path:
        return NS_DIR / f"{self.host}.mnt"

    @property
    def uts_file(self) -> Path:
        return NS_DIR / f"{self.host}.uts"

    def enter(self, argv: Sequence[str]) -> list[str]:
        # Not `ip netns exec`: it makes a fresh mount namespace at every call.
        return [
            "nsenter",
            f"--net={NETNS_DIR / self.net}",
            f"--mount={self.mnt_file}",
            f"--uts={self.uts_file}",
            "--",
            *argv,
        ]

    def holds(self, pid: int) -> bool:
        """Whether ``pid`` lives in this host's network namespace (guards against pid reuse)."""
        try:
            return os.stat(f"/proc/{pid}/ns/net").st_ino == (NETNS_DIR / self.net).stat().st_ino
        except OSError:
            return False

    def create(self, setup_script: str) -> None:
        """Make the mount and UTS namespaces, kept alive by their bind-mounted files, and run
        ``setup_script`` (sh) inside them; the network namespace must exist already."""
        _private_ns_dir()
        for f in (self.mnt_file, self.uts_file):
            f.touch()
        sh(
            [
                "unshare",
                f"--mount={self.mnt_file}",
                f"--uts={self.uts_file}",
                "--propagation",
                "private",
                "true",
            ]
        )
        sh(self.enter(["sh", "-euc", setup_script]))


def _private_ns_dir() -> None:
    # A mount namespace file can only be bind-mounted onto a private mount.
    NS_DIR.mkdir(mode=0o700, exist_ok=True)
    if str(NS_DIR) not in mount_points():
        sh(["mount", "--bind", str(NS_DIR), str(NS_DIR)])
        sh(["mount", "--make-private", str(NS_DIR)])


def create_link(*ends: tuple[HostNamespaces, str, str]) -> None:
    """Two network namespaces joined by a veth pair, ``(namespaces, "ip/len", mac)`` each:
    in each, the bridge with the IP and the veth as its port (MACs fixed: the bridge keeps
    its uplink's, never a VM tap's)."""
    (ns_a, _, mac_a), (ns_b, _, mac_b) = ends
    for ns, _, _ in ends:
        sh(["ip", "netns", "add", ns.net])
    # Created straight inside the namespaces: never visible in the machine's own.
    veth_a = ["ip", "link", "add", ns_a.veth, "address", mac_a, "netns", ns_a.net, "type", "veth"]
    sh([*veth_a, "peer", "name", ns_b.veth, "address", mac_b, "netns", ns_b.net])
    for ns, cidr, mac in ends:
        ip = ["ip", "-n", ns.net]
        # No STP (one link, no loop): a port forwards at once, as CloudStack's bridges do.
        bridge = [*ip, "link", "add", ns.bridge, "address", mac, "type", "bridge"]
        sh([*bridge, "stp_state", "0", "forward_delay", "0"])
        sh([*ip, "link", "set", ns.veth, "master", ns.bridge])
        sh([*ip, "addr", "add", cidr, "dev", ns.bridge])
        for dev in ("lo", ns.veth, ns.bridge):
            sh([*ip, "link", "set", dev, "up"])


def lab_netns() -> list[str]:
    names = (line.split()[0] for line in sh(["ip", "netns", "list"]).splitlines() if line)
    return [n for n in names if n.startswith(PREFIX + "-")]


def lab_links() -> list[str]:
    """Lab interfaces in the machine's own namespace (only a crash mid-setup leaves one)."""
    out = sh(["ip", "-o", "link", "show"])
    names = (line.split(":")[1].strip().split("@")[0] for line in out.splitlines())
    return [n for n in names if n.startswith(PREFIX + "-")]


def netns_pids(name: str) -> list[int]:
    out = sh(["ip", "netns", "pids", name], check=False)
    return [int(p) for p in out.split()]


def mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f]


def lab_mounts() -> list[str]:
    """The lab's mounts in the machine's namespace, deepest first."""
    top = str(NS_DIR)
    found = [m for m in mount_points() if m == top or m.startswith(top + "/")]
    return sorted(found, key=lambda m: m.count("/"), reverse=True)


def alive(pid: int) -> bool:
    """Running, not a zombie (an unreaped child of ours, or of a PID 1 slow to reap)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _signal(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _wait_gone(pids: Iterable[int], timeout: float) -> set[int]:
    """The pids still alive after ``timeout``."""
    deadline = time.monotonic() + timeout
    left = set(pids)
    while (left := {p for p in left if alive(p)}) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


def terminate(pids: Iterable[int], *, timeout: float, sig: int = signal.SIGTERM) -> None:
    """Send ``sig``, wait up to ``timeout`` for the processes to go, then SIGKILL them."""
    pids = set(pids)
    _signal(pids, sig)
    if left := _wait_gone(pids, timeout):
        log.warning("lab.kill", pids=sorted(left), after_seconds=timeout)
        _signal(left, signal.SIGKILL)
        _wait_gone(left, 5)


def destroy_all() -> None:
    """Unmount the namespace files, delete the lab's network namespaces and links.

    Run once no process is left inside: a namespace dies with its last process and file.
    """
    for m in lab_mounts():
        sh(["umount", m], check=False)
    for m in lab_mounts():  # whatever refused a plain umount (nothing should)
        sh(["umount", "--lazy", m], check=False)
    if NS_DIR.exists():
        for f in NS_DIR.iterdir():
            f.unlink(missing_ok=True)
        NS_DIR.rmdir()
    for name in lab_netns():
        sh(["ip", "netns", "delete", name], check=False)
    for link in lab_links():
        sh(["ip", "link", "delete", link], check=False)
