"""Session benchmarks: failover time, ping round trip under load, the agent's memory.

``python -m bench.session`` runs the real agent in its own process against lab
management servers on loopback (real TLS), and prints a table. Each ratio compares two
measurements taken side by side in the same run.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from agent import logs
from agent.config import host_guid
from bench.agent_proc import SLOW_COMMAND
from bench.report import print_figures
from lab.ca import LabCA
from lab.control import control_request
from lab.mgmt import ManagementServer
from protocol.messages.host import StartupRoutingCommand
from protocol.model import UnknownMessage

ROOT = Path(__file__).resolve().parent.parent
GUID = host_guid("bench-agent")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_agent(base: Path, ca: LabCA, hosts: str, **extra: str) -> Path:
    certs = base / "agent-certs"
    ca.write_agent_set(certs, "bench-agent", sans=("127.0.0.1",))
    props = {
        "guid": "bench-agent",
        "host": hosts,
        "hypervisor.uri": "test:///default",
        "cert.dir": str(certs),
        "state.dir": str(base / "agent-state"),
        **extra,
    }
    path = base / "agent.properties"
    path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    return path


def _ms(state_dir: Path, ca: LabCA) -> ManagementServer:
    """An in-process MS that shares the cloud's CA (all MSes of one cloud do)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    if not (state_dir / "ca").exists():
        (state_dir / "ca").symlink_to(ca.directory)
    return ManagementServer.create(state_dir=state_dir, ping_interval=1)


def _start_agent(props: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.agent_proc", "--config", str(props)],
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _failover_once(base: Path, ca: LabCA) -> float:
    port1 = _free_port()
    ms1_dir = base / "ms1"
    ms1_dir.mkdir(parents=True, exist_ok=True)
    if not (ms1_dir / "ca").exists():
        (ms1_dir / "ca").symlink_to(ca.directory)
    ms1 = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lab.mgmt",
            "serve",
            "--listen",
            f"127.0.0.1:{port1}",
            "--state-dir",
            str(ms1_dir),
            "--ping-interval",
            "1",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ms2 = _ms(base / "ms2", ca)
    agent: subprocess.Popen[bytes] | None = None
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(ms2.serve)
            control = ms1_dir / "control.sock"
            with trio.fail_after(20):
                while not control.exists():
                    await trio.sleep(0.05)
            props = _write_agent(base, ca, f"127.0.0.1:{port1},127.0.0.1:{ms2.port}")
            agent = _start_agent(props, base / "agent-failover.log")
            with trio.fail_after(20):
                while True:
                    reply = await control_request(control, {"op": "hosts"})
                    if any(h["connected"] for h in reply.get("hosts", [])):
                        break
                    await trio.sleep(0.05)
            killed = time.monotonic()
            ms1.kill()
            await ms2.wait_for_request(
                lambda _g, r: isinstance(r.commands[0], StartupRoutingCommand), timeout=20
            )
            elapsed = time.monotonic() - killed
            nursery.cancel_scope.cancel()
        return elapsed
    finally:
        if agent is not None:
            _stop(agent)
        ms1.kill()
        ms1.wait()
        ms2.close()


def _rtts(log: Path, since: float, until: float) -> list[float]:
    out = []
    for line in log.read_text().splitlines():
        if not line.startswith("{"):
            continue
        event = json.loads(line)
        if event.get("event") != "ping" or "rtt_ms" not in event:
            continue
        stamp = time.mktime(time.strptime(event["timestamp"][:19], "%Y-%m-%dT%H:%M:%S"))
        stamp -= time.timezone
        if since <= stamp <= until:
            out.append(float(event["rtt_ms"]))
    return out


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


async def _ping_under_load(base: Path, ca: LabCA, seconds: float, slow: int) -> dict[str, Any]:
    ms = _ms(base / "ms-ping", ca)
    result: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(ms.serve)
        props = _write_agent(base, ms.ca, f"127.0.0.1:{ms.port}", workers=str(slow))
        log = base / "agent-ping.log"
        agent = _start_agent(props, log)
        try:
            await ms.wait_for_host(GUID, timeout=30)
            idle_from = time.time()
            await trio.sleep(seconds)
            idle_to = time.time()
            rss_idle = _rss_kib(agent.pid)
            load = UnknownMessage(name=SLOW_COMMAND, fields={"seconds": seconds + 2})
            for _ in range(slow):
                nursery.start_soon(
                    functools.partial(ms.send_command, GUID, [load], timeout=seconds + 30)
                )
            await trio.sleep(1)
            load_from = time.time()
            await trio.sleep(seconds)
            load_to = time.time()
            rss_load = _rss_kib(agent.pid)
            await trio.sleep(3)
            idle, loaded = _rtts(log, idle_from, idle_to), _rtts(log, load_from, load_to)
            result = {
                "pings_idle": len(idle),
                "ping_rtt_idle_p50_ms": _pct(idle, 0.5),
                "ping_rtt_idle_p99_ms": _pct(idle, 0.99),
                "pings_loaded": len(loaded),
                "slow_commands_in_flight": slow,
                "ping_rtt_loaded_p50_ms": _pct(loaded, 0.5),
                "ping_rtt_loaded_p99_ms": _pct(loaded, 0.99),
                "ping_p50_loaded_over_idle": round(
                    _pct(loaded, 0.5) / max(_pct(idle, 0.5), 1e-9), 2
                ),
                "agent_rss_idle_mib": round(rss_idle / 1024, 1),
                "agent_rss_loaded_mib": round(rss_load / 1024, 1),
            }
        finally:
            _stop(agent)
            nursery.cancel_scope.cancel()
    ms.close()
    return result


async def run(*, failovers: int = 5, seconds: float = 15, slow: int = 100) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="kvm-agent-bench-") as tmp:
        base = Path(tmp)
        ca = LabCA.load_or_create(base / "ca")
        times = []
        for i in range(failovers):
            times.append(await _failover_once(base / f"failover-{i}", ca))
        results = {
            "failover_runs": failovers,
            "failover_min_s": round(min(times), 3),
            "failover_median_s": round(statistics.median(times), 3),
            "failover_max_s": round(max(times), 3),
        }
        results.update(await _ping_under_load(base, ca, seconds, slow))
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--failovers", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=15, help="each ping window")
    parser.add_argument("--slow", type=int, default=100, help="slow commands in flight")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    logs.configure("warning")  # the in-process MS would otherwise log every command
    results = trio.run(lambda: run(failovers=args.failovers, seconds=args.seconds, slow=args.slow))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_figures(results)


if __name__ == "__main__":
    main()
