"""One lab at a time: a second run waits for the first, saying so, and never tears it down."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from lab.lock import LabLock

HOLD = """
import sys, time
from pathlib import Path
from lab.lock import LabLock
lock = LabLock(Path(sys.argv[1]))
lock.acquire()
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_second_run_waits_for_the_first_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "lab.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), "1.5"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        out = tmp_path / "said.txt"
        lock = LabLock(path)
        t0 = time.monotonic()
        with out.open("w") as fh:
            lock.acquire(out=fh)
        waited = time.monotonic() - t0
        assert lock.held
        # It waited for the holder to exit, and said whom it waited for.
        assert holder.wait(timeout=5) == 0
        assert waited > 0.5
        said = out.read_text()
        assert f"pid {holder.pid}" in said and "waiting" in said
        lock.release()
        assert not lock.held
    finally:
        holder.kill()
        holder.wait()


def test_a_crashed_holder_does_not_block(tmp_path: Path) -> None:
    path = tmp_path / "lab.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), "60"], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    holder.kill()  # SIGKILL: no clean-up of ours runs; the kernel drops the flock
    holder.wait()
    lock = LabLock(path)
    lock.acquire(timeout=2)
    assert lock.held
    lock.release()
