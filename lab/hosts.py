"""Two real hypervisor hosts on one machine, for migration tests and the demo.

Each host is a network namespace (``kvmlab-<name>``, joined to the other by a veth pair), a
mount and a UTS namespace (files under ``/run/kvmlab``), and its own ``virtlogd`` and
``libvirtd --listen`` run in the foreground as children of the lab's subreaper
(:mod:`lab.reaper`), which reaps them and the QEMUs they leave behind at once. Inside a
host, per-host copies (``<workdir>/hosts/<name>/fs/...``) are bound over ``/etc/libvirt``,
``/etc/pki``, ``/etc/hosts``, ``/etc/hostname``, ``/var/lib/libvirt``, ``/var/log/libvirt``
and ``/var/cache/libvirt``, and ``/run`` is a tmpfs. Everything else, ``<workdir>`` included, is the
machine's own filesystem, seen at the same path by every host: that is where the guest kernel
lives. The shared spec's lab.md has the measurements behind the choices.

Usage::

    lab = Lab.create(Path("/var/tmp/kvm-agent-lab"), ca=LabCA.load_or_create(ca_dir))
    a, b = lab.hosts["a"], lab.hosts["b"]
    a.define_guest("guest1")
    a.wait_guest_filled("guest1")
    with lab.capture("a", pcap) as cap:
        a.virsh("migrate", "--live", "--p2p", "guest1", b.uri)
    print(count_marker(pcap), cap.dropped)
    lab.teardown()
"""

from __future__ import annotations

import ipaddress
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import structlog
from attrs import define, field

from lab.ca import LabCA
from lab.guest import FILLED_LINE, KERNEL_NAME, MARKER, build_kernel, check_name, count_marker
from lab.guest import domain_xml as _domain_xml
from lab.hostconf import BOUND, mount_script, write_tree
from lab.lock import LabLock
from lab.netns import (
    HOST_NAME,
    NS_DIR,
    PREFIX,
    HostNamespaces,
    LabError,
    create_link,
    destroy_all,
    env,
    lab_netns,
    mount_points,
    netns_pids,
    terminate,
)
from lab.reaper import Child, Reaper, ReaperError, end_stale

__all__ = ["MARKER", "Capture", "Lab", "LabError", "LabHost", "count_marker", "teardown_all"]

log = structlog.get_logger("lab.hosts")

LOCAL_URI: Final = "qemu:///system"
_CAPS: Final = "var/cache/libvirt/qemu/capabilities"
_PKI_MARK: Final = "created-etc-pki"  # in the workdir: this lab made /etc/pki
_REAPER_PID: Final = "reaper.pid"  # in the workdir: the lab's subreaper (lab/reaper.py)
_PREFIX_LEN: Final = 24


@define
class LabHost:
    """One hypervisor host of the lab. Commands given to :meth:`run` run inside it."""

    name: str
    ip: str
    root: Path
    kernel: Path
    log_dir: Path
    ns: HostNamespaces = field(init=False)
    # The lab's subreaper, which starts the daemons (lab/reaper.py); set while the lab is built.
    reaper: Reaper | None = field(default=None, repr=False)
    _daemons: dict[str, Child] = field(init=False, factory=dict, repr=False)

    def __attrs_post_init__(self) -> None:
        self.ns = HostNamespaces(self.name)

    @property
    def netns(self) -> str:
        return self.ns.net

    @property
    def veth(self) -> str:
        return self.ns.veth

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
        """The machine's path of ``path`` as seen inside the host (a bound path only)."""
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

    def virsh(self, *args: str, uri: str = LOCAL_URI, timeout: float = 120) -> str:
        """virsh inside the host; its output stripped, or LabError with virsh's message."""
        argv = ["virsh", "-c", uri, *args]
        try:
            done = self.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise LabError(f"{self.name}: {shlex.join(argv)}: no answer in {timeout} s") from None
        if done.returncode != 0:
            raise LabError(f"{self.name}: {shlex.join(argv)}: {done.stderr.strip()}")
        return str(done.stdout).strip()

    # --- daemons --------------------------------------------------------------------

    def _log_file(self, daemon: str) -> Path:
        return self.log_dir / f"{self.name}-{daemon}.log"

    def _start_daemon(self, daemon: str, argv: list[str]) -> Child:
        """Start ``daemon`` inside the host as a child of the lab's subreaper, in its own
        session (a ^C meant for the test run must not kill it before the orderly teardown)."""
        if self.reaper is None:
            raise LabError(f"{self.name}: no lab reaper to start {daemon} with (build the lab)")
        try:
            proc = self.reaper.spawn(self.ns.enter(argv), self._log_file(daemon))
        except ReaperError as exc:
            raise LabError(f"{daemon} on {self.name}: {exc}") from None
        (self.root / f"{daemon}.pid").write_text(f"{proc.pid}\n")
        self._daemons[daemon] = proc
        return proc

    def _daemon_died(self, daemon: str) -> LabError:
        tail = self._log_file(daemon).read_text(errors="replace").splitlines()[-5:]
        return LabError(f"{daemon} on {self.name} exited: " + " | ".join(tail))

    def _running(self, daemon: str) -> bool:
        proc = self._daemons.get(daemon)
        return proc is not None and proc.running()

    def start_libvirtd(self, timeout: float = 60) -> None:
        """Start virtlogd (QEMU logs through it) if needed, then libvirtd; wait for it."""
        if not self._running("virtlogd"):
            proc = self._start_daemon("virtlogd", ["virtlogd"])
            sock = Path(f"/proc/{proc.pid}/root/run/libvirt/virtlogd-sock")
            deadline = time.monotonic() + 10
            while not sock.exists():
                if not proc.running() or time.monotonic() > deadline:
                    raise self._daemon_died("virtlogd")
                time.sleep(0.01)
        if self._running("libvirtd"):
            raise LabError(f"libvirtd on {self.name} runs already")
        t0 = time.monotonic()
        self._start_daemon("libvirtd", ["libvirtd", "--listen"])
        self.wait_libvirtd(timeout)
        log.info("lab.libvirtd_started", host=self.name, seconds=round(time.monotonic() - t0, 2))

    def wait_libvirtd(self, timeout: float = 60) -> None:
        """Until ``virsh version`` answers inside the host."""
        deadline = time.monotonic() + timeout
        argv = ["virsh", "-c", LOCAL_URI, "version"]
        while True:
            proc = self._daemons.get("libvirtd")
            if proc is not None and not proc.running():
                raise self._daemon_died("libvirtd")
            left = deadline - time.monotonic()
            if left <= 0:
                raise LabError(f"libvirtd on {self.name}: no answer within {timeout} s")
            try:
                # Blocks while libvirtd initialises, fails at once before its socket exists.
                if self.run(argv, capture_output=True, timeout=left).returncode == 0:
                    return
            except subprocess.TimeoutExpired:
                continue
            time.sleep(0.05)

    def stop_libvirtd(self, timeout: float = 30) -> None:
        """SIGTERM and wait (SIGKILL after ``timeout``); running guests stay up."""
        proc = self._daemons.pop("libvirtd", None)
        if proc is None:
            return
        proc.terminate()
        if not proc.wait(timeout):
            log.warning("lab.libvirtd_killed", host=self.name, after_seconds=timeout)
            proc.kill()
            proc.wait()
        proc.close()
        (self.root / "libvirtd.pid").unlink(missing_ok=True)

    def restart_libvirtd(self) -> None:
        self.stop_libvirtd()
        self.start_libvirtd()

    def libvirtd_running(self) -> bool:
        return self._running("libvirtd")

    def _reap(self) -> None:
        """Wait for the daemons that someone else (teardown_all) has ended, and forget them
        (the lab's reaper has collected their exit status)."""
        for proc in self._daemons.values():
            if not proc.wait(10):
                proc.kill()
                proc.wait(10)
            proc.close()
        self._daemons.clear()

    def _prepare(self, ca: LabCA, peers: dict[str, str], tls: bool) -> None:
        """A fresh tree, mounted in new mount and UTS namespaces (the network one exists)."""
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        write_tree(self.fs, self.cert_dir, name=self.name, ip=self.ip, peers=peers, ca=ca, tls=tls)
        self.ns.create(mount_script(self.fs, self.name))

    # --- guests ---------------------------------------------------------------------

    def serial_log(self, name: str) -> str:
        return f"/var/log/libvirt/qemu/{check_name(name)}-serial.log"

    def define_guest(self, name: str = "guest1", *, start: bool = True, tcg: bool = True) -> str:
        """Define (persistent) and start the marker guest; TCG by default: under nested KVM
        its RAM fill is slow (lab.md). Its kernel is at the same path in every host."""
        xml = _domain_xml(name, self.kernel, tcg=tcg, serial_log=self.serial_log(name))
        path = self.root / f"{name}.xml"
        path.write_text(xml)
        self.virsh("define", str(path))
        if start:
            self.virsh("start", name)
        log.info("lab.guest_defined", host=self.name, guest=name, started=start, tcg=tcg)
        return name

    def wait_guest_filled(self, name: str = "guest1", timeout: float = 60) -> float:
        """Until the guest, running here, says its RAM holds the marker; the seconds waited.

        The guest repeats it every ~0.4 s, and each start or incoming migration rewrites its
        serial log here: after a migration this also shows that it runs on this host."""
        t0 = time.monotonic()
        path = self.outside(self.serial_log(name))
        while not (path.exists() and FILLED_LINE in path.read_bytes()):
            if time.monotonic() - t0 > timeout:
                raise LabError(f"{name} on {self.name}: RAM not filled within {timeout} s")
            time.sleep(0.05)
        return time.monotonic() - t0

    def domain_state(self, name: str) -> str | None:
        """``virsh domstate`` ("running", "shut off", ...), or None if not defined here."""
        done = self.run(
            ["virsh", "-c", LOCAL_URI, "domstate", name], capture_output=True, text=True
        )
        if done.returncode == 0:
            return str(done.stdout).strip()
        if "failed to get domain" in done.stderr or "Domain not found" in done.stderr:
            return None
        raise LabError(f"{self.name}: virsh domstate {name}: {done.stderr.strip()}")

    # --- setting up -----------------------------------------------------------------


@define
class Capture:
    """A capture file, with tcpdump's counts once the capture has ended."""

    path: Path
    packets: int | None = None
    dropped: int | None = None


def _read_until(proc: subprocess.Popen[bytes], needle: bytes, timeout: float) -> bytes:
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise LabError(f"tcpdump did not start: {seen.decode(errors='replace')}")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise LabError(f"tcpdump exited: {seen.decode(errors='replace').strip()}")
        seen += chunk
    return seen


def _count(text: str, what: str) -> int | None:
    m = re.search(rf"(\d+) packets? {what}", text)
    return int(m.group(1)) if m else None


@define
class Lab:
    """The hosts, joined by a veth pair on ``<subnet>.0/24``; build with :meth:`create`."""

    workdir: Path
    ca: LabCA
    hosts: dict[str, LabHost]
    tls: bool
    lock: LabLock = field(factory=LabLock, repr=False)
    reaper: Reaper | None = field(default=None, repr=False)

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
                )
                for i, name in enumerate(names, 1)
            },
            tls,
        )
        lab.rebuild()
        return lab

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
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        # The daemons' parent, which reaps them and their orphaned QEMUs at once (lab/reaper.py).
        self.reaper = Reaper.start(
            self.workdir / _REAPER_PID, self.workdir / "logs" / "reaper.log", env()
        )
        for host in self.hosts.values():
            host.reaper = self.reaper
        etc_pki = Path("/etc/pki")
        if not etc_pki.exists():  # a mount point is needed for the hosts' own
            etc_pki.mkdir()
            (self.workdir / _PKI_MARK).touch()
        a, b = self.hosts.values()
        create_link((a.ns, f"{a.ip}/{_PREFIX_LEN}"), (b.ns, f"{b.ip}/{_PREFIX_LEN}"))
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
        """Stop everything and remove the hosts; the capability cache and logs stay."""
        try:
            teardown_all(self.workdir)
            self._forget_daemons()
        finally:
            self.lock.release()

    def _forget_daemons(self) -> None:
        """After teardown_all: drop the daemons' handles, and let the (childless) reaper go."""
        for host in self.hosts.values():
            host._reap()
            host.reaper = None
        reaper, self.reaper = self.reaper, None
        if reaper is not None:
            reaper.close()

    @contextmanager
    def capture(self, host_name: str, path: Path) -> Iterator[Capture]:
        """tcpdump on the host's veth into ``path`` (a path outside the bound ones) for the
        duration of the block; capturing already when the block starts."""
        host = self.hosts[host_name]
        path = path.absolute()
        path.parent.mkdir(parents=True, exist_ok=True)
        argv = ["tcpdump", "-i", host.veth, "-n", "-s", "0", "-B", "32768", "-Z", "root"]
        proc = host.popen(
            [*argv, "-w", str(path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        cap = Capture(path)
        stderr = b""
        try:
            # tcpdump says "listening on" once the capture is active.
            stderr = _read_until(proc, b"listening on", timeout=10)
            yield cap
        finally:
            proc.send_signal(signal.SIGINT)  # tcpdump flushes the file and prints its counts
            try:
                stderr += proc.communicate(timeout=30)[1]
            except subprocess.TimeoutExpired:
                proc.kill()
                stderr += proc.communicate()[1]
            text = stderr.decode(errors="replace")
            cap.packets, cap.dropped = _count(text, "captured"), _count(text, "dropped by kernel")
            log.info("lab.captured", host=host_name, path=str(path), packets=cap.packets)


def _pid_files(ns: HostNamespaces, root: Path) -> dict[str, list[int]]:
    """The pids of the host's libvirtd, virtlogd and QEMUs from their pid files, those in
    the host's ``/run`` and ours, kept only if they live in the host (no reused pid)."""
    found: dict[str, set[int]] = {"libvirtd": set(), "virtlogd": set(), "qemu": set()}
    for daemon in ("libvirtd", "virtlogd"):
        try:
            found[daemon].add(int((root / f"{daemon}.pid").read_text()))
        except (OSError, ValueError):
            pass
    if str(ns.mnt_file) in mount_points():
        # libvirt's pid files have no trailing newline: one per line via printf.
        script = (
            "for f in /run/libvirtd.pid /run/virtlogd.pid /run/libvirt/qemu/*.pid; do"
            ' [ -f "$f" ] && printf "%s %s\\n" "$f" "$(cat "$f")"; done; true'
        )
        out = subprocess.run(
            ["nsenter", f"--mount={ns.mnt_file}", "sh", "-c", script],
            capture_output=True,
            text=True,
            check=False,
            env=env(),
        ).stdout
        for line in out.splitlines():
            path, _, pid = line.partition(" ")
            kind = "qemu" if path.startswith("/run/libvirt/qemu/") else Path(path).stem
            # /run/libvirt/qemu/driver.pid is libvirtd's own lock, not a QEMU's.
            if pid.isdigit() and kind in found and path != "/run/libvirt/qemu/driver.pid":
                found[kind].add(int(pid))
    return {kind: [p for p in pids if ns.holds(p)] for kind, pids in found.items()}


def teardown_all(workdir: Path) -> None:
    """Remove every trace of a lab, running or crashed; safe to call any number of times.

    Stops libvirtd and QEMU (SIGTERM), then virtlogd, by pid files; kills what is left in
    the lab's network namespaces; ends the lab's subreaper; unmounts the namespace files,
    deletes the namespaces and veths, removes ``/etc/pki`` if the lab created it, and the
    hosts' directories.
    """
    t0 = time.monotonic()
    workdir = workdir.absolute()
    names = {n.removeprefix(f"{PREFIX}-") for n in lab_netns()}
    if NS_DIR.is_dir():
        names |= {p.stem for p in NS_DIR.glob("*.mnt")}
    if (workdir / "hosts").is_dir():
        names |= {p.name for p in (workdir / "hosts").iterdir()}
    names = {n for n in names if HOST_NAME.fullmatch(n)}
    pids: dict[str, list[int]] = {"libvirtd": [], "qemu": [], "virtlogd": []}
    for name in sorted(names):
        for kind, found in _pid_files(HostNamespaces(name), workdir / "hosts" / name).items():
            pids[kind] += found
    # libvirtd first: QEMUs dying under it can slow its shutdown. virtlogd last: QEMU logs
    # through it.
    for kind in ("libvirtd", "qemu", "virtlogd"):
        terminate(pids[kind], timeout=15)
    for net in lab_netns():
        terminate(netns_pids(net), timeout=5, sig=signal.SIGKILL)
    # Its children are gone now; a crashed run's reaper would otherwise wait for its socket.
    end_stale(workdir / _REAPER_PID)
    destroy_all()
    if (workdir / _PKI_MARK).exists():
        try:
            Path("/etc/pki").rmdir()  # only if empty: never anything but the lab's
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("lab.etc_pki_kept", error=str(exc))
        (workdir / _PKI_MARK).unlink()
    shutil.rmtree(workdir / "hosts", ignore_errors=True)
    log.info(
        "lab.teardown",
        workdir=str(workdir),
        stopped=sum(map(len, pids.values())),
        seconds=round(time.monotonic() - t0, 2),
    )


DEFAULT_WORKDIR = Path(os.environ.get("KVMLAB_DIR", "/var/tmp/kvm-agent-lab"))
_TOOLS = (
    "libvirtd",
    "virtlogd",
    "virsh",
    "virt-admin",
    "qemu-system-x86_64",
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
