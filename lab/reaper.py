"""The lab's subreaper: parent of the lab's daemons and of the QEMUs they leave behind.

libvirtd starts QEMU as a daemon (a double fork), so QEMU's parent becomes the nearest
ancestor marked "child subreaper", else PID 1. On the lab machine PID 1 reaps orphans
1.6-1.8 s late, and at the end of every migration libvirt waits for the source QEMU to
disappear (a zombie counts as alive): each lab migration carried that wait. Under systemd a
real host reaps at once; the lab must not measure this machine's PID 1 either.

So the lab starts its daemons through this small process (stdlib only, run as a script): it
makes itself a subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``), spawns what it is asked to, and
reaps every child the moment it exits (``waitpid(-1)``). It is a process of its own rather
than the test runner: a ``waitpid(-1)`` there would steal the exit status of the runner's
own subprocesses.

Protocol on its stdin, a ``SOCK_SEQPACKET`` unix socket: a request is one JSON message
``{"argv": [...], "log": path}`` (stdout and stderr appended to ``log``, stdin
``/dev/null``, a new session); the answer is ``{"pid": N}`` with a pidfd of the new process
attached, or ``{"error": "..."}``. A pidfd names the process itself, never a reused pid.
The reaper exits once its socket is closed (the lab ended, or its runner crashed) and no
child is left; :func:`end_stale` ends it through its pid file after a crash.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

PR_SET_CHILD_SUBREAPER: Final = 36
MARK: Final = "kvmlab-reaper"  # in its command line: a pid file never leads to another process
_MAX_MESSAGE: Final = 1 << 16


class ReaperError(RuntimeError):
    """The reaper could not start a process, or is gone."""


# --- the reaper process ---------------------------------------------------------------


def _reap() -> bool:
    """Collect every exited child; whether any child is left."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True
        code = os.waitstatus_to_exitcode(status)
        print(f"{time.strftime('%H:%M:%S')} reaped {pid}: {code}", flush=True)


def _spawn(request: dict[str, Any]) -> int:
    argv = [str(a) for a in request["argv"]]
    out = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        pid = os.posix_spawnp(
            argv[0],
            argv,
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, devnull, 0),
                (os.POSIX_SPAWN_DUP2, out, 1),
                (os.POSIX_SPAWN_DUP2, out, 2),
            ],
            setsid=True,  # a ^C meant for the test run must not reach the daemons
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),  # as subprocess restores them
        )
    finally:
        os.close(out)
        os.close(devnull)
    print(f"{time.strftime('%H:%M:%S')} started {pid}: {' '.join(argv)}", flush=True)
    return pid


def _answer(sock: socket.socket, message: bytes) -> None:
    try:
        request = json.loads(message)
        pid = _spawn(request)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        sock.send(json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode())
        return
    # Opened before this loop can reap it: the pid cannot have been reused yet.
    pidfd = os.pidfd_open(pid)
    try:
        socket.send_fds(sock, [json.dumps({"pid": pid}).encode()], [pidfd])
    except OSError:
        pass  # the lab is gone; the next recv says so
    finally:
        os.close(pidfd)


def serve(sock: socket.socket) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)  # SIGCHLD wakes the select below
    signal.signal(signal.SIGCHLD, lambda *_: None)
    connected = True
    while True:
        children = _reap()
        if not connected and not children:
            return
        watched = [wake_r, sock.fileno()] if connected else [wake_r]
        ready = select.select(watched, [], [])[0]
        if wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(wake_r, 512):
                    pass
        if sock.fileno() in ready:
            try:
                message = sock.recv(_MAX_MESSAGE)
            except OSError:
                message = b""
            if not message:  # the lab closed its end, or its process died
                connected = False
                print(f"{time.strftime('%H:%M:%S')} lab gone; reaping until no child is left")
                continue
            _answer(sock, message)


# --- the lab's side -------------------------------------------------------------------


class Child:
    """A process the reaper started: its pid, and a pidfd to watch and signal it by."""

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self._pidfd: int | None = pidfd

    def wait(self, timeout: float | None = None) -> bool:
        """Whether it has exited, waiting up to ``timeout`` seconds (None: for ever)."""
        if self._pidfd is None:
            return True
        return bool(select.select([self._pidfd], [], [], timeout)[0])

    def running(self) -> bool:
        return not self.wait(0)

    def send_signal(self, sig: int) -> None:
        if self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError):  # exited already
                signal.pidfd_send_signal(self._pidfd, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def close(self) -> None:
        fd, self._pidfd = self._pidfd, None
        if fd is not None:
            os.close(fd)


class Reaper:
    """The lab's handle on its reaper process: :meth:`start`, :meth:`spawn`, :meth:`close`."""

    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket, pid_file: Path) -> None:
        self.proc, self._sock, self.pid_file = proc, sock, pid_file

    @classmethod
    def start(cls, pid_file: Path, log: Path, env: dict[str, str] | None = None) -> Reaper:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with log.open("ab") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-I", __file__, MARK],
                    stdin=theirs.fileno(),
                    stdout=out,
                    stderr=out,
                    env=env,
                    start_new_session=True,
                )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        pid_file.write_text(f"{proc.pid}\n")
        return cls(proc, ours, pid_file)

    def spawn(self, argv: Sequence[str], log: Path) -> Child:
        """Start ``argv`` as the reaper's child, output appended to ``log``."""
        try:
            self._sock.send(json.dumps({"argv": list(argv), "log": str(log)}).encode())
            message, fds, _, _ = socket.recv_fds(self._sock, _MAX_MESSAGE, 1)
        except OSError as exc:
            raise ReaperError(f"the lab's reaper (pid {self.proc.pid}) is gone: {exc}") from None
        if not message:
            raise ReaperError(f"the lab's reaper (pid {self.proc.pid}) exited; see its log")
        reply = json.loads(message)
        if "error" in reply:
            raise ReaperError(f"could not start {argv[-1] if argv else argv}: {reply['error']}")
        return Child(int(reply["pid"]), fds[0])

    def close(self, timeout: float = 10) -> None:
        """Let it go: it exits once its last child is gone (SIGKILL after ``timeout``)."""
        self._sock.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.pid_file.exists() and self.pid_file.read_text().strip() == str(self.proc.pid):
            self.pid_file.unlink()


def _is_reaper(pid: int) -> bool:
    """A live reaper (a zombie's command line is empty)."""
    try:
        return MARK in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[-2].decode()
    except (OSError, IndexError, UnicodeDecodeError):
        return False


def end_stale(pid_file: Path, timeout: float = 5) -> int | None:
    """End the reaper named by ``pid_file`` (a crashed run's, or ours once its children are
    gone) and remove the file; the pid ended, if any."""
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        pid_file.unlink(missing_ok=True)
        return None
    ended = None
    if _is_reaper(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            ended = pid
        deadline = time.monotonic() + timeout
        while _is_reaper(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _is_reaper(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return ended


if __name__ == "__main__":
    serve(socket.socket(fileno=0))
