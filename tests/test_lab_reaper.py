"""The lab's subreaper (lab/reaper.py): parent of what it starts and of their orphans.

Plain processes here (no namespaces, no root): the two-host lab's own use of it is checked in
tests/test_lab_hosts.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lab.reaper import Reaper, ReaperError, end_stale


def parent_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no PPid for {pid}")


def exists(pid: int) -> bool:
    """In the process table at all, zombies included."""
    return Path(f"/proc/{pid}").exists()


def wait_for(condition: Callable[[], object], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


@pytest.fixture
def reaper(tmp_path: Path) -> Iterator[Reaper]:
    started = Reaper.start(tmp_path / "reaper.pid", tmp_path / "reaper.log")
    try:
        yield started
    finally:
        end_stale(tmp_path / "reaper.pid")
        started.close()


def test_spawned_processes_are_its_children(reaper: Reaper, tmp_path: Path) -> None:
    child = reaper.spawn(["sleep", "30"], tmp_path / "sleep.log")
    assert child.running()
    assert parent_of(child.pid) == reaper.proc.pid
    assert (tmp_path / "reaper.pid").read_text().strip() == str(reaper.proc.pid)
    child.terminate()
    assert child.wait(10)
    assert not child.running()
    # Reaped by the reaper, not left a zombie.
    assert wait_for(lambda: not exists(child.pid))
    child.close()


def test_orphans_are_adopted_and_reaped(reaper: Reaper, tmp_path: Path) -> None:
    """What libvirtd does with QEMU: a double fork leaves an orphan, which must come to the
    reaper (not PID 1) and vanish as soon as it exits."""
    pid_file = tmp_path / "orphan.pid"
    child = reaper.spawn(
        ["sh", "-c", f'sleep 30 & echo $! > "{pid_file}"; exit 0'], tmp_path / "sh.log"
    )
    assert child.wait(10)
    child.close()
    assert wait_for(lambda: pid_file.exists() and pid_file.read_text().strip())
    orphan = int(pid_file.read_text())
    assert wait_for(lambda: parent_of(orphan) == reaper.proc.pid)
    os.kill(orphan, signal.SIGTERM)
    assert wait_for(lambda: not exists(orphan))
    assert f"reaped {orphan}: -15" in (tmp_path / "reaper.log").read_text()


def test_output_goes_to_the_log_and_stdin_is_empty(reaper: Reaper, tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    log.write_text("before\n")
    child = reaper.spawn(["sh", "-c", "echo out; echo err >&2; cat; echo done"], log)
    assert child.wait(10)
    assert log.read_text() == "before\nout\nerr\ndone\n"


def test_a_command_that_cannot_start_is_a_clear_error(reaper: Reaper, tmp_path: Path) -> None:
    with pytest.raises(ReaperError, match=r"could not start .*FileNotFoundError"):
        reaper.spawn(["/nonexistent/daemon"], tmp_path / "x.log")
    # The reaper still serves.
    child = reaper.spawn(["true"], tmp_path / "true.log")
    assert child.wait(10)


def test_it_stays_while_children_live_after_its_lab_went(tmp_path: Path) -> None:
    """A crashed runner (its socket closed): the reaper keeps reaping the daemons until they
    are gone, then exits by itself; end_stale ends it earlier (teardown_all's way)."""
    reaper = Reaper.start(tmp_path / "reaper.pid", tmp_path / "reaper.log")
    child = reaper.spawn(["sleep", "30"], tmp_path / "sleep.log")
    reaper._sock.close()  # as if the runner died
    time.sleep(0.3)
    assert reaper.proc.poll() is None  # still there: it has a child
    child.kill()
    assert reaper.proc.wait(10) == 0  # and gone with its last child
    child.close()

    second = Reaper.start(tmp_path / "reaper.pid", tmp_path / "reaper.log")
    child = second.spawn(["sleep", "30"], tmp_path / "sleep.log")
    assert end_stale(tmp_path / "reaper.pid") == second.proc.pid
    assert second.proc.wait(10) == -signal.SIGTERM
    assert not (tmp_path / "reaper.pid").exists()
    assert end_stale(tmp_path / "reaper.pid") is None  # idempotent
    child.kill()  # orphaned to PID 1 now: the lab's teardown kills it by its namespace
    child.close()
    second.close()


def test_end_stale_never_signals_another_process(tmp_path: Path) -> None:
    other = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / "reaper.pid").write_text(f"{other.pid}\n")
        assert end_stale(tmp_path / "reaper.pid") is None
        assert other.poll() is None
        assert not (tmp_path / "reaper.pid").exists()
    finally:
        other.kill()
        other.wait()
