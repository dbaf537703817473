"""``make demo``: the product's main job on real parts, end to end.

Today's story (libvirt's test driver stands in for the hypervisor until the two-host lab
is wired in): two lab management servers share a CA; one agent registers with MS1 over
mutual TLS, answers a command, and fails over to MS2 when MS1 is killed.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import trio

from agent import logs
from agent.config import AgentConfig
from agent.daemon import Agent
from lab.ca import LabCA
from lab.mgmt import ManagementServer
from protocol.messages import CheckHealthCommand, StartupRoutingCommand

GUID = "demo-host-LibvirtComputingResource"


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def _ms(base: Path, name: str, ca: LabCA) -> ManagementServer:
    state = base / name
    state.mkdir(parents=True)
    shutil.copytree(ca.directory, state / "ca")
    return ManagementServer.create(state_dir=state, ping_interval=2)


async def story(base: Path) -> list[tuple[str, str]]:
    ca = LabCA.create(base / "cloud-ca")
    ms1, ms2 = _ms(base, "ms1", ca), _ms(base, "ms2", ca)
    summary: list[tuple[str, str]] = []
    async with trio.open_nursery() as outer:
        await outer.start(ms2.serve)
        async with trio.open_nursery() as ms1_scope:
            await ms1_scope.start(ms1.serve)
            say(f"MS1 on 127.0.0.1:{ms1.port}, MS2 on 127.0.0.1:{ms2.port}, one CA")
            certs = base / "agent"
            certs.mkdir()
            (certs / "cloud.ca.crt").write_bytes(ca.cert_pem)
            config = AgentConfig.from_properties(
                {
                    "guid": "demo-host",
                    "host": f"127.0.0.1:{ms1.port},127.0.0.1:{ms2.port}",
                    "hypervisor.uri": "test:///default",
                    "cert.dir": str(certs),
                    "state.dir": str(base / "agent-state"),
                }
            )
            agent = Agent(config, handle_signals=False)
            outer.start_soon(agent.run)
            started = time.monotonic()
            record = await ms1.wait_for_host(GUID, timeout=30)
            took = time.monotonic() - started
            say(
                f"agent registered with MS1 as host {record.id} in {took:.2f}s "
                f"(secured={record.details.get('secured')})"
            )
            summary.append(("registration", f"{took:.2f} s"))
            (answer,) = await ms1.send_command(GUID, [CheckHealthCommand()])
            say(f"MS1 -> CheckHealthCommand -> {answer.details}")  # type: ignore[attr-defined]
            killed = time.monotonic()
            ms1_scope.cancel_scope.cancel()
        say("MS1 killed")
        await ms2.wait_for_request(
            lambda _g, r: isinstance(r.commands[0], StartupRoutingCommand), timeout=30
        )
        failover = time.monotonic() - killed
        await ms2.wait_for_host(GUID, timeout=30)
        say(f"agent registered with MS2 {failover * 1000:.0f} ms after MS1 died")
        summary.append(("failover MS1 -> MS2", f"{failover * 1000:.0f} ms"))
        agent.request_stop()
        with trio.fail_after(10):
            while agent.session is not None:
                await trio.sleep(0.05)
        outer.cancel_scope.cancel()
    ms1.close()
    ms2.close()
    return summary


def main() -> int:
    logs.configure("warning")
    base = Path(tempfile.mkdtemp(prefix="kvm-agent-demo-"))
    try:
        summary = trio.run(story, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print("\nsummary")
    for what, value in summary:
        print(f"  {what:<24}{value}")
    print(
        "\nNot in the demo yet: the two real hypervisor hosts, secure live migration and "
        "in-band certificate provisioning (see the open issues)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
