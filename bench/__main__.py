"""``make bench``: every benchmark in one run, printed as a table and written as JSON."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from agent import logs
from bench import burst, codec, migration, session, vmlife, zone
from bench.report import RESULTS, print_figures
from lab.hosts import lab_unavailable


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "date": time.strftime("%Y-%m-%d"),
    }


def main() -> int:
    logs.configure("warning")
    results: dict[str, Any] = {"machine": machine()}
    print("== codec (messages per second) ==")
    results["codec"] = codec.run(1.0)
    codec.print_table(results["codec"])
    print("\n== session (real agent process, lab MS on loopback, mutual TLS) ==")
    results["session"] = trio.run(session.run)
    print_figures(results["session"])
    print("\n== burst (20,000 CheckHealthCommands at once; real agent process, ping every 1 s) ==")
    results["burst"] = trio.run(burst.run)
    print_figures(results["burst"])
    # The lab benchmarks: each skipped, with the reason, where the lab cannot run.
    reason = lab_unavailable()
    lab_benches: list[tuple[str, str, Any, Callable[[Any], None]]] = [
        ("migration", "two-host lab, 128 MiB guest", migration.run, migration.print_table),
        (
            "zone",
            "two-host lab, the real connect sequence, statistics cycle",
            zone.run,
            print_figures,
        ),
        (
            "vmlife",
            "lab host a: StartCommand -> running, StopCommand -> gone",
            vmlife.run,
            print_figures,
        ),
    ]
    for name, title, run, show in lab_benches:
        print(f"\n== {name} ({title}) ==")
        if reason:
            print(f"skipped: {reason}")
            results[name] = {"skipped": reason}
        else:
            results[name] = trio.run(run)
            show(results[name])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
