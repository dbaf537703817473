"""One lab at a time on a machine: an exclusive lock held from build to teardown.

The lab's namespaces, veths and ``/run/kvmlab`` files have fixed names, so two runs
(``make test`` and ``make demo``, say) would tear each other down. Instead a second run
waits for the first, saying so. ``flock`` is released by the kernel when the holder exits,
crashed or not, so a stale lock cannot block anybody.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path
from typing import Final, TextIO

import structlog

LOCK_FILE: Final = Path(os.environ.get("KVMLAB_LOCK", "/run/kvmlab.lock"))

log = structlog.get_logger("lab.lock")


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 512, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "unknown process"


class LabLock:
    """``acquire()`` blocks until this process owns the lab; ``release()`` gives it up."""

    def __init__(self, path: Path = LOCK_FILE) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, *, timeout: float | None = None, out: TextIO | None = None) -> None:
        if self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            message = f"lab: another lab run ({holder}) holds {self.path}; waiting for it to end"
            print(message, file=out or sys.stderr, flush=True)
            log.info("lab.waiting", holder=holder, lock=str(self.path))
            self._wait(fd, timeout)
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {' '.join(sys.argv)[:200]}\n".encode(), 0)
        self._fd = fd

    @staticmethod
    def _wait(fd: int, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    os.close(fd)
                    raise TimeoutError(f"the lab stayed busy for {timeout} s") from None
                time.sleep(0.5)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock
