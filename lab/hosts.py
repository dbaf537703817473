"""Two real hypervisor hosts on one machine, for migration tests and the demo.

Each host is a network namespace (``kvmlab-<name>``: the bridge ``cloudbr0`` holds its IP and
enslaves ``eth0``, its end of the veth pair to the other host; :mod:`lab.netns`), a mount and
a UTS namespace (files under ``/run/kvmlab``), and its own ``virtlogd`` and ``libvirtd
--listen`` (:mod:`lab.daemons`), children of the lab's subreaper (:mod:`lab.reaper`), which
reaps them and the QEMUs they leave behind at once. Inside a host, per-host copies
(``<workdir>/hosts/<name>/fs/...``) are bound over ``/etc/libvirt``, ``/etc/pki``,
``/etc/hosts``, ``/etc/hostname``, ``/var/lib/libvirt``, ``/var/log/libvirt`` and
``/var/cache/libvirt``, ``/run`` is a tmpfs, and ``<workdir>/pool`` is bound at
``/mnt/kvmlab-primary`` in both: the shared primary pool (:mod:`lab.storage`), which the
libvirtds see as a cluster filesystem (:mod:`lab.clusterfs`). Everything else,
``<workdir>`` included, is the machine's own filesystem, seen at the same path by every
host: that is where the guest kernel lives. The shared spec's lab.md has the measurements
behind the choices.

Usage::

    lab = Lab.create(Path("/var/tmp/kvm-agent-lab"), ca=LabCA.load_or_create(ca_dir))
    a, b = lab.hosts["a"], lab.hosts["b"]
    a.define_guest("guest1")                      # the multiboot kernel, no disk
    a.wait_guest_filled("guest1")
    with lab.capture("a", pcap) as cap:
        a.virsh("migrate", "--live", "--p2p", "guest1", b.uri)
    print(count_marker(pcap), cap.dropped)

    template = lab.place_template()               # /mnt/kvmlab-primary/<TEMPLATE_UUID>
    disk = a.create_overlay(f"{lab.shared_pool_path}/vm2-root", template)
    a.define_disk_guest("vm2", disk, bridge=a.bridge)   # BIOS boot from the disk
    a.virsh("migrate", "--live", "--p2p", "vm2", b.uri) # shared pool: no --unsafe
    lab.teardown()
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Final

import structlog
from attrs import define, field

from lab.bootdisk import build_template
from lab.ca import LabCA
from lab.capture import Capture, capture
from lab.clusterfs import build_shim, preload_env
from lab.daemons import LOCAL_URI, HostDaemons
from lab.guest import KERNEL_NAME, MARKER, build_kernel, count_marker
from lab.guests import HostGuests
from lab.hostconf import BOUND, mount_script, write_tree
from lab.lock import LabLock
from lab.netns import HOST_NAME, HostNamespaces, LabError, create_link, env
from lab.reaper import Reaper
from lab.storage import SHARED_POOL_PATH, TEMPLATE_UUID, place_file, pool_dir, prepare_shared_pool
from lab.teardown import PKI_MARK, REAPER_PID, teardown_all

__all__ = ["MARKER", "Capture", "Lab", "LabError", "LabHost", "count_marker", "teardown_all"]

log = structlog.get_logger("lab.hosts")

_CAPS: Final = "var/cache/libvirt/qemu/capabilities"
_PREFIX_LEN: Final = 24


@define
class LabHost(HostGuests):
    """One hypervisor host of the lab. Commands given to :meth:`run` run inside it; its
    guests: :class:`lab.guests.HostGuests`; its daemons: :class:`lab.daemons.HostDaemons`."""

    name: str
    ip: str
    root: Path
    kernel: Path
    log_dir: Path
    pool_dir: Path  # the machine's directory behind SHARED_POOL_PATH
    ns: HostNamespaces = field(init=False)
    daemons: HostDaemons = field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self.ns = HostNamespaces(self.name)
        self.daemons = HostDaemons(self.name, self.ns, self.root, self.log_dir)

    @property
    def netns(self) -> str:
        return self.ns.net

    @property
    def veth(self) -> str:
        """The uplink (``eth0``), a port of :attr:`bridge`: captures see the hosts' traffic."""
        return self.ns.veth

    @property
    def bridge(self) -> str:
        """``cloudbr0``: the host's IP is on it; VM NICs plug into it."""
        return self.ns.bridge

    @property
    def cert_dir(self) -> Path:
        """``cloud.ca.crt``, ``cloud.crt``, ``cloud.key``: the agent's certificate directory."""
        return self.root / "certs"

    @property
    def fs(self) -> Path:
        """Where the host's own copies of the bound paths are, on the machine."""
        return self.root / "fs"

    @property
    def uri(self) -> str:
        """This host's libvirtd, from inside another host."""
        return f"qemu+tcp://{self.ip}/system"

    @property
    def tls_uri(self) -> str:
        return f"qemu+tls://{self.ip}/system"

    def outside(self, path: str) -> Path:
        """The machine's path of ``path`` as seen inside the host (a bound path, or one on
        the shared pool)."""
        if path == SHARED_POOL_PATH or path.startswith(SHARED_POOL_PATH + "/"):
            return self.pool_dir / path[len(SHARED_POOL_PATH) :].lstrip("/")
        for top in BOUND:
            if path == top or path.startswith(top + "/"):
                return self.fs / path.lstrip("/")
        raise ValueError(f"{path} is not a per-host path")

    # --- commands inside the host ---------------------------------------------------

    def run(self, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """``subprocess.run`` inside the host (its cwd is the host's ``/``)."""
        kw.setdefault("env", env())
        return subprocess.run(self.ns.enter(argv), **kw)

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """``subprocess.Popen`` inside the host; the pid is the command's own (nsenter
        execs it, no fork)."""
        kw.setdefault("env", env())
        return subprocess.Popen(self.ns.enter(argv), **kw)

    def check(self, argv: Sequence[str], timeout: float = 120) -> str:
        """Run ``argv`` inside the host; its stdout stripped, or LabError with its stderr."""
        try:
            done = self.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise LabError(f"{self.name}: {shlex.join(argv)}: no answer in {timeout} s") from None
        if done.returncode != 0:
            raise LabError(f"{self.name}: {shlex.join(argv)}: {done.stderr.strip()}")
        return str(done.stdout).strip()

    def virsh(self, *args: str, uri: str = LOCAL_URI, timeout: float = 120) -> str:
        """virsh inside the host; its output stripped, or LabError with virsh's message."""
        return self.check(["virsh", "-c", uri, *args], timeout=timeout)

    # --- daemons (lab/daemons.py) ---------------------------------------------------

    def start_libvirtd(self, timeout: float = 60, *, cluster_fs: bool = True) -> None:
        """Start virtlogd if needed, then libvirtd; ``cluster_fs=False``: without the
        clusterfs shim (the shared pool is then plain ext4 to it, as in the control tests)."""
        self.daemons.start_libvirtd(timeout, cluster_fs=cluster_fs)

    def wait_libvirtd(self, timeout: float = 60) -> None:
        self.daemons.wait_libvirtd(timeout)

    def stop_libvirtd(self, timeout: float = 30) -> None:
        """SIGTERM and wait (SIGKILL after ``timeout``); running guests stay up."""
        self.daemons.stop_libvirtd(timeout)

    def restart_libvirtd(self, *, cluster_fs: bool = True) -> None:
        self.stop_libvirtd()
        self.start_libvirtd(cluster_fs=cluster_fs)

    def libvirtd_running(self) -> bool:
        return self.daemons.running("libvirtd")

    def _prepare(self, ca: LabCA, peers: dict[str, str], tls: bool) -> None:
        """A fresh tree, mounted in new mount and UTS namespaces (the network one exists)."""
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        write_tree(self.fs, self.cert_dir, name=self.name, ip=self.ip, peers=peers, ca=ca, tls=tls)
        shared = {SHARED_POOL_PATH: self.pool_dir}
        self.ns.create(mount_script(self.fs, self.name, shared))


@define
class Lab:
    """The hosts, joined by a veth pair on ``<subnet>.0/24``; build with :meth:`create`."""

    workdir: Path
    ca: LabCA
    hosts: dict[str, LabHost]
    tls: bool
    lock: LabLock = field(factory=LabLock, repr=False)
    reaper: Reaper | None = field(default=None, repr=False)
    cluster_fs_shim: Path | None = field(default=None, repr=False)

    @classmethod
    def create(
        cls,
        workdir: Path,
        *,
        ca: LabCA,
        hosts: Sequence[str] = ("a", "b"),
        subnet: str = "10.200.0",
        tls: bool = True,
    ) -> Lab:
        """Clear whatever a previous run left, then build the hosts and start their daemons.

        With ``tls=False`` the hosts have no certificates, an empty ``/etc/pki`` and no TLS
        listener: hosts not yet provisioned.
        """
        names = tuple(hosts)
        if len(names) != 2 or names[0] == names[1]:
            raise ValueError("the lab has two hosts (a veth pair joins them)")
        for name in names:
            if not HOST_NAME.fullmatch(name):
                raise ValueError(f"bad host name {name!r}: [a-z][a-z0-9]{{0,6}}")
        net = ipaddress.ip_network(f"{subnet}.0/{_PREFIX_LEN}")  # ValueError if malformed
        workdir = workdir.absolute()  # the hosts' cwd is their "/"
        lab = cls(
            workdir,
            ca,
            {
                name: LabHost(
                    name,
                    str(net.network_address + i),
                    workdir / "hosts" / name,
                    workdir / "guest" / KERNEL_NAME,
                    workdir / "logs",
                    pool_dir(workdir),
                )
                for i, name in enumerate(names, 1)
            },
            tls,
        )
        lab.rebuild()
        return lab

    @property
    def shared_pool_path(self) -> str:
        """The shared primary pool inside every host (a SharedMountPoint pool's path)."""
        return SHARED_POOL_PATH

    @property
    def shared_pool_dir(self) -> Path:
        """The machine's directory behind :attr:`shared_pool_path`."""
        return pool_dir(self.workdir)

    def rebuild(self) -> None:
        """Build everything anew (after :func:`teardown_all`, or a crash); same hosts.

        Waits first while another process's lab runs (:mod:`lab.lock`): never tears down
        a lab that is in use."""
        self.lock.acquire()
        t0 = time.monotonic()
        teardown_all(self.workdir)
        self._forget_daemons()
        try:
            self._build()
        except BaseException:
            self.teardown()
            raise
        log.info("lab.created", workdir=str(self.workdir), seconds=round(time.monotonic() - t0, 2))

    def _build(self) -> None:
        build_kernel(self.workdir / "guest")
        self.cluster_fs_shim = build_shim(self.workdir / "shim")
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        # The daemons' parent, which reaps them and their orphaned QEMUs at once (lab/reaper.py).
        self.reaper = Reaper.start(
            self.workdir / REAPER_PID, self.workdir / "logs" / "reaper.log", env()
        )
        cluster_fs = preload_env(self.cluster_fs_shim, [SHARED_POOL_PATH])
        for host in self.hosts.values():
            host.daemons.reaper = self.reaper
            host.daemons.cluster_fs_env = cluster_fs
        etc_pki = Path("/etc/pki")
        if not etc_pki.exists():  # a mount point is needed for the hosts' own
            etc_pki.mkdir()
            (self.workdir / PKI_MARK).touch()
        prepare_shared_pool(self.workdir)
        a, b = self.hosts.values()
        create_link(*((h.ns, f"{h.ip}/{_PREFIX_LEN}", _mac(i)) for i, h in enumerate((a, b), 1)))
        peers = {h.name: h.ip for h in self.hosts.values()}
        for host in self.hosts.values():
            host._prepare(self.ca, peers, self.tls)
        # The first libvirtd start probes QEMU for ~7.7 s; later ones reuse its cache.
        cache = self.workdir / "cache" / "qemu-capabilities"
        for host in self.hosts.values():
            if cache.is_dir():
                shutil.copytree(cache, host.fs / _CAPS, dirs_exist_ok=True)
            host.start_libvirtd()
            if not cache.is_dir() and any((host.fs / _CAPS).glob("*.xml")):
                shutil.copytree(host.fs / _CAPS, cache)

    def teardown(self) -> None:
        """Stop everything and remove the hosts; the build caches and logs stay."""
        try:
            teardown_all(self.workdir)
            self._forget_daemons()
        finally:
            self.lock.release()

    def _forget_daemons(self) -> None:
        """After teardown_all: drop the daemons' handles, and let the (childless) reaper go."""
        for host in self.hosts.values():
            host.daemons.reap()
            host.daemons.reaper = None
        reaper, self.reaper = self.reaper, None
        if reaper is not None:
            reaper.close()

    def capture(self, host_name: str, path: Path) -> AbstractContextManager[Capture]:
        """tcpdump on the host's uplink into ``path`` (a path outside the bound ones) for the
        duration of the block; capturing already when the block starts."""
        return capture(self.hosts[host_name], path)

    def place_template(self, uuid: str = TEMPLATE_UUID) -> str:
        """The bootable marker disk (:mod:`lab.bootdisk`, built once per workdir) copied onto
        the shared pool as ``uuid``, as CloudStack keeps a template on primary storage; its
        path inside the hosts (``/mnt/kvmlab-primary/<uuid>``)."""
        return place_file(self.workdir, build_template(self.workdir / "guest"), uuid)


def _mac(index: int) -> str:
    """The uplink's and the bridge's MAC on the ``index``-th host: fixed and locally
    administered. Set explicitly, the bridge keeps it when VM taps join."""
    return f"02:6b:6c:00:00:{index:02x}"


DEFAULT_WORKDIR = Path(os.environ.get("KVMLAB_DIR", "/var/tmp/kvm-agent-lab"))
_TOOLS = (
    "libvirtd",
    "virtlogd",
    "virsh",
    "virt-admin",
    "qemu-system-x86_64",
    "qemu-img",
    "gcc",
    "tcpdump",
    "nsenter",
    "unshare",
    "ip",
    "as",
    "ld",
    "openssl",
)


def lab_unavailable() -> str | None:
    """Why the two-host lab cannot run here, or None. TCG needs no /dev/kvm."""
    if os.geteuid() != 0:
        return "the two-host lab needs root"
    path = env()["PATH"]
    missing = [tool for tool in _TOOLS if shutil.which(tool, path=path) is None]
    if missing:
        return f"the two-host lab needs {', '.join(missing)} (see scripts/bootstrap.sh)"
    return None
