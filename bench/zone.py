"""Zone benchmarks on the two-host lab (root): ``python -m bench.zone``.

* **connect to Up**: from the lab MS accepting an agent's TCP connection to the host Up,
  through a 4.21 MS's connect sequence (TLS handshake, StartupRoutingCommand, then
  CleanupNetworkRules, ModifyStoragePool on the shared pool with wait 300, CheckNetwork,
  SetHostParams, ModifySshKeys, ReadyCommand). The first connect of each agent (its libvirt
  pool is created), then ``--reconnects`` reconnections per host forced by the MS (the whole
  sequence again; the pool exists).
* **stats answer latency**: the MS's statistics cycle at a short interval
  (:data:`STATS_INTERVAL`: GetHostStats, GetVmStats, GetStorageStats), the time of each
  answer as the MS sees it, p50/p99 while live migrations run (native TLS, a 128 MiB guest
  dirtying its memory) and, for comparison, while the hosts are idle for as long.

Figures are indicative on a shared two-core machine.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Sequence
from typing import Any, Final

import trio

from agent import logs
from bench.labcloud import lab_cloud
from bench.report import RESULTS, report
from lab.cloud import LabCloud

VM = "guest1"
RECONNECTS: Final = 4
MIGRATIONS: Final = 6
STATS_INTERVAL: Final = 0.2  # seconds between statistics cycles (60 s in a real MS)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0-100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(p / 100 * len(ordered))))
    return ordered[rank - 1]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


async def _ups(cloud: LabCloud, name: str) -> list[float]:
    return [c["connect_to_up_s"] for c in await cloud.connects(name) if c["outcome"] == "Up"]


async def _reconnect(cloud: LabCloud, name: str) -> float:
    """Make the MS drop the host; the seconds from its new TCP connection to Up."""
    before = len(await _ups(cloud, name))
    await cloud.disconnect(name)
    with trio.fail_after(60):
        while len(ups := await _ups(cloud, name)) <= before:
            await trio.sleep(0.05)
    return float(ups[-1])


async def _latencies(cloud: LabCloud, since: float, until: float) -> dict[str, list[float]]:
    """Answer times by command (GetHostStatsCommand...) between two wall-clock times."""
    reply = await cloud.control({"op": "latencies", "since": since, "until": until})
    return {k: list(v) for k, v in reply["latencies"].items()}


def _merge(into: dict[str, list[float]], more: dict[str, list[float]]) -> None:
    for command, values in more.items():
        into.setdefault(command, []).extend(values)


def _by_command(latencies: dict[str, list[float]]) -> dict[str, float]:
    """p99 (ms) of each command."""
    return {k.removesuffix("Command"): _ms(percentile(v, 99)) for k, v in sorted(latencies.items())}


def _figures(prefix: str, values: Sequence[float]) -> dict[str, Any]:
    if not values:
        return {f"{prefix}_count": 0}
    return {
        f"{prefix}_count": len(values),
        f"{prefix}_p50_ms": _ms(percentile(values, 50)),
        f"{prefix}_p99_ms": _ms(percentile(values, 99)),
        f"{prefix}_max_ms": _ms(max(values)),
    }


async def run(reconnects: int = RECONNECTS, migrations: int = MIGRATIONS) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with lab_cloud("zone") as (lab, cloud):
        cloud.start_ms("ms1", "a", stats_interval=STATS_INTERVAL)
        for name in ("a", "b"):
            cloud.start_agent(name)
        first = []
        for name in ("a", "b"):
            await cloud.wait_host(name, timeout=60)
            first.append((await _ups(cloud, name))[0])
        again = [await _reconnect(cloud, n) for _ in range(reconnects) for n in ("a", "b")]
        out["connect_first_ms"] = [_ms(s) for s in first]
        out["reconnects"] = len(again)
        out["connect_to_up_median_ms"] = _ms(statistics.median(again))
        out["connect_to_up_min_ms"] = _ms(min(again))
        out["connect_to_up_max_ms"] = _ms(max(again))

        for name in ("a", "b"):
            answer = await cloud.provision(name)
            if not answer.get("result"):
                raise RuntimeError(f"provisioning {name}: {answer.get('details')}")
        for name in ("a", "b"):
            await cloud.wait_host(name, secured=True, timeout=60)
        await trio.to_thread.run_sync(lambda: lab.hosts["a"].define_guest(VM))
        await trio.to_thread.run_sync(lambda: lab.hosts["a"].wait_guest_filled(VM))

        await trio.sleep(1.0)
        where, busy = "a", 0.0
        migrating: list[tuple[float, float]] = []
        for _ in range(migrations):
            dest = "b" if where == "a" else "a"
            started = time.time()
            reply = await cloud.migrate(VM, where, dest, timeout=300)
            migrating.append((started, time.time()))
            answer = next(iter(reply.get("answer", {}).values()), {})
            if not reply.get("ok") or not answer.get("result"):
                raise RuntimeError(f"migration {where} -> {dest}: {reply}")
            busy += migrating[-1][1] - migrating[-1][0]
            where = dest
            await trio.to_thread.run_sync(lab.hosts[where].wait_guest_filled, VM, 60)
        # As long idle as it was busy (the guest still dirties its memory, nothing moves).
        idle_from = time.time()
        await trio.sleep(busy)
        idle = await _latencies(cloud, idle_from, time.time())
        during: dict[str, list[float]] = {}
        for since, until in migrating:
            _merge(during, await _latencies(cloud, since, until))
        out["stats_interval_s"] = STATS_INTERVAL
        out["migrations"] = migrations
        out["migrating_s"] = round(busy, 2)
        out |= _figures("stats_during_migration", [s for v in during.values() for s in v])
        out["stats_during_migration_p99_ms_by_command"] = _by_command(during)
        out |= _figures("stats_idle", [s for v in idle.values() for s in v])
        out["stats_idle_p99_ms_by_command"] = _by_command(idle)
        summary = await cloud.stats()
        out["stats_failed"] = summary["failed_count"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reconnects", type=int, default=RECONNECTS)
    parser.add_argument("--migrations", type=int, default=MIGRATIONS)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--save", action="store_true", help=f"also write the figures as 'zone' into {RESULTS}"
    )
    args = parser.parse_args()
    logs.configure("warning")
    result = trio.run(lambda: run(args.reconnects, args.migrations))
    report("zone", result, as_json=args.json, save=args.save)


if __name__ == "__main__":
    main()
