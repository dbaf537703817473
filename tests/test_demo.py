"""The part of `make demo` that runs without root (libvirt's test driver, two MSes)."""

from __future__ import annotations

from pathlib import Path

from lab.demo import test_driver_story as story_without_lab


async def test_demo_without_the_lab_runs_its_story(tmp_path: Path) -> None:
    summary = dict(await story_without_lab(tmp_path))
    failover = summary["failover MS1 -> MS2"]
    # At once, not after backoff.seconds (5 s, the demo agent's default): real sockets and a
    # real clock, so the bound tells the two apart rather than measuring speed (bench/ does).
    assert failover.endswith(" ms") and int(failover.split()[0]) < 5000
