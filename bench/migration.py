"""Migration benchmarks on the two-host lab (root): ``python -m bench.migration``.

* agent overhead: a MigrateCommand through the agent vs a direct ``migrateToURI3`` of the
  same VM with the same URI and flags, alternating in one run (target <= 1.05);
* encryption cost: direct migrations with QEMU native TLS vs plain TCP (target <= 1.3).
Each figure is the median of ``--rounds`` migrations each way.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from agent import logs
from lab.ca import LAB_CA_DIRNAME, LabCA
from lab.cloud import ROOT, LabCloud
from lab.hosts import DEFAULT_WORKDIR, Lab

VM = "guest1"
WORKDIR = DEFAULT_WORKDIR


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


async def run(rounds: int = 3) -> dict[str, Any]:
    ca = LabCA.load_or_create(WORKDIR / LAB_CA_DIRNAME)
    lab = await trio.to_thread.run_sync(lambda: Lab.create(WORKDIR, ca=ca))
    base = Path(tempfile.mkdtemp(prefix="kvm-agent-bench-"))
    cloud = LabCloud(lab, base, ca)
    times: dict[str, list[float]] = {"agent_tls": [], "direct_tls": [], "direct_tcp": []}
    try:
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
            for kind in ("agent_tls", "direct_tls", "direct_tcp"):
                for _leg in range(2):  # there and back, so each leg starts where the VM is
                    dest = "b" if where == "a" else "a"
                    if kind == "agent_tls":
                        took = await _agent(cloud, lab, where, dest)
                    else:
                        took = await trio.to_thread.run_sync(
                            functools.partial(_direct, lab, where, dest, tls=kind == "direct_tls")
                        )
                    times[kind].append(took)
                    where = dest
                    await trio.to_thread.run_sync(lab.hosts[where].wait_guest_filled, VM, 60)
    finally:
        cloud.close()
        await trio.to_thread.run_sync(lab.teardown)
        shutil.rmtree(base, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "migrations_each": 2 * rounds,
        "agent_tls_median_s": round(med["agent_tls"], 3),
        "direct_tls_median_s": round(med["direct_tls"], 3),
        "direct_tcp_median_s": round(med["direct_tcp"], 3),
        "agent_over_direct": round(med["agent_tls"] / med["direct_tls"], 3),
        "native_tls_over_tcp": round(med["direct_tls"] / med["direct_tcp"], 3),
        "samples": {k: [round(x, 3) for x in v] for k, v in times.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logs.configure("warning")
    result = trio.run(lambda: run(args.rounds))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
