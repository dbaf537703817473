"""A lab host's daemons: virtlogd and ``libvirtd --listen``, children of the lab's reaper.

They run in the foreground, inside the host's namespaces, in sessions of their own (a ^C
meant for the test run must not kill them before the orderly teardown), their output in
``<logs>/<host>-<daemon>.log``, their pids in ``<host root>/<daemon>.pid`` for
:func:`lab.teardown.teardown_all`. libvirtd gets the clusterfs shim's environment
(:mod:`lab.clusterfs`) unless told otherwise; nothing else does.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Final

import structlog
from attrs import define, field

from lab.netns import HostNamespaces, LabError, env
from lab.reaper import Child, Reaper, ReaperError

log = structlog.get_logger("lab.daemons")

LOCAL_URI: Final = "qemu:///system"


@define
class HostDaemons:
    """Start, wait for, stop the daemons of the host ``name``."""

    name: str
    ns: HostNamespaces
    root: Path
    log_dir: Path
    # The lab's subreaper, which starts the daemons (lab/reaper.py); set while the lab is built.
    reaper: Reaper | None = field(default=None, repr=False)
    # LD_PRELOAD and its path list (lab.clusterfs.preload_env); empty: no shim.
    cluster_fs_env: dict[str, str] = field(factory=dict)
    # Whether the running libvirtd has the shim.
    cluster_fs: bool = field(default=False, init=False)
    _procs: dict[str, Child] = field(init=False, factory=dict, repr=False)

    def log_file(self, daemon: str) -> Path:
        return self.log_dir / f"{self.name}-{daemon}.log"

    def pid(self, daemon: str) -> int | None:
        proc = self._procs.get(daemon)
        return proc.pid if proc is not None else None

    def _start(self, daemon: str, argv: list[str]) -> Child:
        if self.reaper is None:
            raise LabError(f"{self.name}: no lab reaper to start {daemon} with (build the lab)")
        try:
            proc = self.reaper.spawn(self.ns.enter(argv), self.log_file(daemon))
        except ReaperError as exc:
            raise LabError(f"{daemon} on {self.name}: {exc}") from None
        (self.root / f"{daemon}.pid").write_text(f"{proc.pid}\n")
        self._procs[daemon] = proc
        return proc

    def _died(self, daemon: str) -> LabError:
        tail = self.log_file(daemon).read_text(errors="replace").splitlines()[-5:]
        return LabError(f"{daemon} on {self.name} exited: " + " | ".join(tail))

    def running(self, daemon: str) -> bool:
        proc = self._procs.get(daemon)
        return proc is not None and proc.running()

    def start_libvirtd(self, timeout: float = 60, *, cluster_fs: bool = True) -> None:
        """Start virtlogd (QEMU logs through it) if needed, then libvirtd, with the clusterfs
        shim if it has one and ``cluster_fs``; wait until it answers."""
        if not self.running("virtlogd"):
            proc = self._start("virtlogd", ["virtlogd"])
            sock = Path(f"/proc/{proc.pid}/root/run/libvirt/virtlogd-sock")
            deadline = time.monotonic() + 10
            while not sock.exists():
                if not proc.running() or time.monotonic() > deadline:
                    raise self._died("virtlogd")
                time.sleep(0.01)
        if self.running("libvirtd"):
            raise LabError(f"libvirtd on {self.name} runs already")
        t0 = time.monotonic()
        shim = cluster_fs and bool(self.cluster_fs_env)
        # env(1) execs libvirtd: the pid stays libvirtd's, and nsenter runs without the shim.
        preload = ["env", *(f"{k}={v}" for k, v in self.cluster_fs_env.items())] if shim else []
        self._start("libvirtd", [*preload, "libvirtd", "--listen"])
        self.cluster_fs = shim
        self.wait_libvirtd(timeout)
        seconds = round(time.monotonic() - t0, 2)
        log.info("lab.libvirtd_started", host=self.name, seconds=seconds, cluster_fs=shim)

    def wait_libvirtd(self, timeout: float = 60) -> None:
        """Until ``virsh version`` answers inside the host."""
        deadline = time.monotonic() + timeout
        argv = self.ns.enter(["virsh", "-c", LOCAL_URI, "version"])
        while True:
            proc = self._procs.get("libvirtd")
            if proc is not None and not proc.running():
                raise self._died("libvirtd")
            left = deadline - time.monotonic()
            if left <= 0:
                raise LabError(f"libvirtd on {self.name}: no answer within {timeout} s")
            try:
                # Blocks while libvirtd initialises, fails at once before its socket exists.
                done = subprocess.run(argv, capture_output=True, timeout=left, env=env())
                if done.returncode == 0:
                    return
            except subprocess.TimeoutExpired:
                continue
            time.sleep(0.05)

    def stop_libvirtd(self, timeout: float = 30) -> None:
        """SIGTERM and wait (SIGKILL after ``timeout``); running guests stay up."""
        proc = self._procs.pop("libvirtd", None)
        if proc is None:
            return
        proc.terminate()
        if not proc.wait(timeout):
            log.warning("lab.libvirtd_killed", host=self.name, after_seconds=timeout)
            proc.kill()
            proc.wait()
        proc.close()
        (self.root / "libvirtd.pid").unlink(missing_ok=True)

    def reap(self) -> None:
        """Wait for the daemons that someone else (teardown_all) has ended, and forget them
        (the lab's reaper has collected their exit status)."""
        for proc in self._procs.values():
            if not proc.wait(10):
                proc.kill()
                proc.wait(10)
            proc.close()
        self._procs.clear()
        self.cluster_fs = False
