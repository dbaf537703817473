"""Migration benchmarks on the two-host lab (root): ``python -m bench.migration``.

* agent overhead: a MigrateCommand through the agent vs a direct ``migrateToURI3`` of the
  same VM with the same URI and flags (target <= 1.05);
* encryption cost: direct migrations with QEMU native TLS vs plain TCP (target <= 1.25).

The three kinds run interleaved, one migration each in turn (agent, TLS, TCP, agent, ...);
the VM moves every time, so each kind goes both ways in a round of six. Every migration
records its **wall** time (what the caller waits for) and libvirt's **job** time, read on
the destination afterwards (bench/job_stats.py): the job runs until QEMU reports the
migration complete, so the **gap** between the two is what comes around it (connections,
confirming on both hosts, ending the source QEMU). Figures are medians over ``--rounds``
rounds (two migrations of each kind per round: at least five pairs by default).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any, Final

import trio

from agent import logs
from bench.labcloud import lab_cloud
from bench.report import print_figures
from lab.cloud import ROOT, LabCloud
from lab.hosts import Lab

VM = "guest1"
KINDS: Final = ("agent_tls", "direct_tls", "direct_tcp")
ROUNDS: Final = 3


def _direct(lab: Lab, source: str, dest: str, *, tls: bool) -> float:
    uri = f"qemu+{'tls' if tls else 'tcp'}://{lab.hosts[dest].ip}/system"
    argv = [sys.executable, "-m", "bench.direct_migrate", VM, uri, *(["--tls"] if tls else [])]
    done = lab.hosts[source].run(argv, cwd=ROOT, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


async def _agent(cloud: LabCloud, lab: Lab, source: str, dest: str) -> float:
    item = {
        "com.cloud.agent.api.MigrateCommand": {
            "vmName": VM,
            "destinationIp": lab.hosts[dest].ip,
            "wait": 300,
        }
    }
    started = time.monotonic()
    answer = await cloud.send(source, item)
    took = time.monotonic() - started
    if not answer.get("result"):
        raise RuntimeError(f"agent migration failed: {answer.get('details')}")
    return took


def _job_stats(lab: Lab, dest: str) -> dict[str, Any]:
    """libvirt's completed-job statistics of the incoming migration, on the destination."""
    argv = [sys.executable, "-m", "bench.job_stats", VM]
    done = lab.hosts[dest].run(argv, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"job statistics on {dest}: {done.stderr.strip()}")
    stats: dict[str, Any] = json.loads(done.stdout)
    if "time_elapsed" not in stats:
        raise RuntimeError(f"no completed migration job on {dest}: {stats}")
    return stats


def record(kind: str, source: str, dest: str, wall: float, stats: dict[str, Any]) -> dict[str, Any]:
    job = stats["time_elapsed"] / 1000
    return {
        "kind": kind,
        "route": f"{source}->{dest}",
        "wall_s": round(wall, 3),
        "job_s": round(job, 3),
        "gap_s": round(wall - job, 3),
        "downtime_ms": stats.get("downtime"),
    }


def summarize(migrations: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians per kind (wall, job, gap) and the two ratios, then every migration."""
    med: dict[str, dict[str, float]] = {}
    for kind in KINDS:
        rows = [m for m in migrations if m["kind"] == kind]
        med[kind] = {f: statistics.median(m[f] for m in rows) for f in ("wall_s", "job_s", "gap_s")}
    out: dict[str, Any] = {
        "migrations_each": min(sum(m["kind"] == k for m in migrations) for k in KINDS)
    }
    for kind in KINDS:
        out[f"{kind}_median_s"] = round(med[kind]["wall_s"], 3)
        out[f"{kind}_job_median_s"] = round(med[kind]["job_s"], 3)
        out[f"{kind}_gap_median_s"] = round(med[kind]["gap_s"], 3)
    tls, tcp, agent = med["direct_tls"], med["direct_tcp"], med["agent_tls"]
    out["agent_over_direct"] = round(agent["wall_s"] / tls["wall_s"], 3)
    out["native_tls_over_tcp"] = round(tls["wall_s"] / tcp["wall_s"], 3)
    out["native_tls_over_tcp_job"] = round(tls["job_s"] / tcp["job_s"], 3)
    out["migrations"] = list(migrations)
    return out


async def run(rounds: int = ROUNDS) -> dict[str, Any]:
    migrations: list[dict[str, Any]] = []
    async with lab_cloud("migration") as (lab, cloud):
        cloud.start_ms("ms1", "a")
        for name in ("a", "b"):
            cloud.start_agent(name)
        for name in ("a", "b"):
            await cloud.wait_host(name)
            await cloud.provision(name)
        for name in ("a", "b"):
            await cloud.wait_host(name, secured=True)
        await trio.to_thread.run_sync(lambda: lab.hosts["a"].define_guest(VM))
        await trio.to_thread.run_sync(lambda: lab.hosts["a"].wait_guest_filled(VM))
        where = "a"
        for _ in range(rounds):
            for kind in KINDS * 2:
                dest = "b" if where == "a" else "a"
                if kind == "agent_tls":
                    took = await _agent(cloud, lab, where, dest)
                else:
                    took = await trio.to_thread.run_sync(
                        functools.partial(_direct, lab, where, dest, tls=kind == "direct_tls")
                    )
                stats = await trio.to_thread.run_sync(_job_stats, lab, dest)
                migrations.append(record(kind, where, dest, took, stats))
                where = dest
                await trio.to_thread.run_sync(lab.hosts[where].wait_guest_filled, VM, 60)
    return summarize(migrations)


def print_table(result: dict[str, Any]) -> None:
    """The medians, then one line per migration (wall, job, and the gap between them)."""
    print_figures({k: v for k, v in result.items() if k != "migrations"})
    print(
        f"\n{'kind':<11} {'route':<6} {'wall_s':>7} {'job_s':>7} {'gap_s':>7} {'downtime_ms':>11}"
    )
    for m in result.get("migrations", []):
        print(
            f"{m['kind']:<11} {m['route']:<6} {m['wall_s']:>7.3f} {m['job_s']:>7.3f} "
            f"{m['gap_s']:>7.3f} {m['downtime_ms']!s:>11}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    logs.configure("warning")
    result = trio.run(lambda: run(args.rounds))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)


if __name__ == "__main__":
    main()
