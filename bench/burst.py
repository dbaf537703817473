"""A burst of cheap commands: how fast the agent serves it, what it costs, whether pings flow.

``python -m bench.burst`` runs the real agent in its own process against a management
server in this process (real TLS on loopback) that sends N CheckHealthCommands as fast as
it can (all encoded first, then written at once), reads the answers, and answers the
agent's pings (ping interval 1 s) as they come. Figures: commands/s from the first byte
written to the last answer read; the agent's RSS before, at its peak, and after; the
longest gap between two pings seen during the burst; how many answers were result=true.
``--save`` merges the figures into bench/results/latest.json under "burst".
"""

from __future__ import annotations

import argparse
import itertools
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio

from agent import logs
from agent.link.transport import ConnectionLost, MessageStream
from bench.report import RESULTS, report
from lab.ca import LabCA
from protocol import Request, Response, Session
from protocol.messages.host import (
    CheckHealthAnswer,
    CheckHealthCommand,
    PingAnswer,
    PingRoutingCommand,
    StartupAnswer,
    StartupRoutingCommand,
)

ROOT = Path(__file__).resolve().parent.parent
PING_INTERVAL = 1


def _status_mib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


class _Ms:
    """The MS side of one agent connection, read by hand."""

    def __init__(self, stream: MessageStream) -> None:
        self.stream = stream
        self.pings: list[float] = []
        self.responses: list[Response] = []

    async def _events(self, until: float = math.inf) -> list[Request | Response]:
        conn = self.stream.conn
        out = []
        while (event := conn.next_event()) is not None:
            out.append(event)
        if not out:
            with trio.move_on_at(until):  # only a read is ever cut short, never a write
                data = await self.stream._read()
                if not data:
                    raise ConnectionLost("the agent closed the connection")
                conn.receive_data(data)
        return out  # type: ignore[return-value]

    async def register(self) -> None:
        while True:
            for event in await self._events():
                if isinstance(event, Request) and isinstance(
                    event.commands[0], StartupRoutingCommand
                ):
                    self.stream.session.agent_id = 1
                    answer = StartupAnswer(host_id=1, ping_interval=PING_INTERVAL, result=True)
                    await self.stream.respond(event, [answer])
                    return

    async def serve(self, count: int | None = None, until: float = math.inf) -> None:
        """Answer pings; collect responses until ``count`` of them arrived or time ``until``."""
        while (count is None or len(self.responses) < count) and trio.current_time() < until:
            for event in await self._events(until):
                if isinstance(event, Response):
                    self.responses.append(event)
                elif isinstance(event.commands[0], PingRoutingCommand):
                    self.pings.append(trio.current_time())
                    await self.stream.respond(event, [PingAnswer(send_startup=False)])


async def run(count: int = 20_000) -> dict[str, Any]:
    logs.configure("warning")
    with tempfile.TemporaryDirectory(prefix="kvm-agent-burst-") as tmp:
        base = Path(tmp)
        ca = LabCA.load_or_create(base / "ca")
        certs = base / "agent-certs"
        ca.write_agent_set(certs, "bench-agent", sans=("127.0.0.1",))
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        props = base / "agent.properties"
        props.write_text(
            f"guid=bench-agent\nhost=127.0.0.1:{port}\nhypervisor.uri=test:///default\n"
            f"cert.dir={certs}\nstate.dir={base / 'state'}\n"
        )
        log = (base / "agent.log").open("wb")
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(props)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            tcp = await listeners[0].accept()
            stream = await MessageStream.accept(
                tcp,
                ca.server_context(),
                Session.for_management(1),
                peer="agent",
                handshake_timeout=30,
            )
            ms = _Ms(stream)
            await ms.register()
            await ms.serve(until=trio.current_time() + 3 * PING_INTERVAL)  # a few idle pings
            rss_before = _status_mib(agent.pid, "VmRSS")
            hwm_before = _status_mib(agent.pid, "VmHWM")
            pings_before = len(ms.pings)
            started = trio.current_time()
            async with trio.open_nursery() as nursery:

                async def write() -> None:
                    # Encrypted under the write lock: TLS records must leave in the order
                    # they were sealed, and a PingAnswer may be sent meanwhile.
                    async with stream._write_lock:
                        conn = stream.conn
                        sealed = (
                            conn.send_request([CheckHealthCommand()])[1] for _ in range(count)
                        )
                        await stream._write(b"".join(sealed))

                nursery.start_soon(write)
                await ms.serve(count)
            took = trio.current_time() - started
            rss_peak = _status_mib(agent.pid, "VmHWM")
            rss_after = _status_mib(agent.pid, "VmRSS")
            # From the last ping before the burst to the end of the burst.
            window = [*ms.pings[max(0, pings_before - 1) :], trio.current_time()]
            gaps = [b - a for a, b in itertools.pairwise(window)]
            served = sum(
                1
                for r in ms.responses
                if isinstance(r.answers[0], CheckHealthAnswer) and r.answers[0].result
            )
            await stream.aclose()
        finally:
            agent.terminate()
            try:
                agent.wait(timeout=45)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
            for listener in listeners:
                await listener.aclose()
    return {
        "burst_commands": count,
        "burst_served_ok": served,
        "burst_seconds": round(took, 2),
        "burst_commands_per_s": round(count / took),
        "burst_ping_interval_s": PING_INTERVAL,
        "burst_pings_during": len(ms.pings) - pings_before,
        "burst_longest_ping_gap_s": round(max(gaps), 2),
        "agent_rss_before_mib": rss_before,
        "agent_rss_peak_mib": max(rss_peak, hwm_before),
        "agent_rss_after_mib": rss_after,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--save", action="store_true", help="merge into bench/results")
    args = parser.parse_args()
    results = trio.run(run, args.count)
    report("burst", results, as_json=args.json, save=args.save)
    if args.save:
        print(f"merged into {RESULTS}")


if __name__ == "__main__":
    main()
