"""The agent's life on the wire, against the lab management server over real mutual TLS."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from agent.handlers import HandlerRegistry
from agent.handlers.context import CommandContext
from agent.link.session import STOPPED_BY_PREVIOUS_FAILURE
from lab.ca import LabCA
from protocol import Request
from protocol.messages.host import (
    CheckHealthAnswer,
    CheckHealthCommand,
    MigrateAgentConnectionCommand,
    PingRoutingCommand,
    ShutdownCommand,
    StartupRoutingCommand,
)
from protocol.model import Answer, Command, Message, UnknownMessage, UnsupportedAnswer
from tests.agent_env import (
    ROOT,
    agent_config,
    agent_dir,
    captured_logs,
    free_port,
    guid_of,
    ms_process,
    running_agent,
    running_ms,
    shared_ca,
)

GUID = guid_of("agent1")


def is_startup(_guid: str, req: Request) -> bool:
    return isinstance(req.commands[0], StartupRoutingCommand)


def startups(ms: Any) -> int:
    return sum(1 for g, r in ms.received if is_startup(g, r))


async def test_startup_order_and_fields(tmp_path: Path) -> None:
    async with running_ms(tmp_path, ping_interval=1) as ms:
        config = agent_config(tmp_path, f"127.0.0.1:{ms.port}", agent_dir(tmp_path, ms.ca))
        async with running_agent(config):
            record = await ms.wait_for_host(GUID, timeout=10)
            await ms.wait_for_request(
                lambda g, r: isinstance(r.commands[0], PingRoutingCommand), timeout=5
            )
        first_guid, first = ms.received[0]
        assert first_guid == GUID
        startup = first.commands[0]
        assert isinstance(startup, StartupRoutingCommand)
        assert int(first.header.flags) & 0x01 and not int(first.header.flags) & 0x20
        assert startup.guid == GUID
        assert startup.type.value == "Routing" and startup.hypervisor_type == "KVM"
        assert startup.resource_name == "LibvirtComputingResource"
        assert startup.cpus > 0 and startup.memory > 0 and startup.speed > 0
        assert startup.caps == "hvm,snapshot"
        assert startup.host_details["secured"] == "false"
        assert {"Host.OS", "Host.OS.Version", "Host.OS.Kernel.Version"} <= set(startup.host_details)
        assert startup.ms_host_list == f"127.0.0.1:{ms.port}"
        assert startup.private_ip_address and startup.private_mac_address
        assert (startup.data_center, startup.pod, startup.cluster) == ("default",) * 3
        # The ReadyCommand's identity is kept under state.dir, and pings carry the id.
        state = json.loads((tmp_path / "agent-state" / "agent-state.json").read_text())
        assert state["host_id"] == record.id and state["host_uuid"] == record.uuid
        pings = [r for _, r in ms.received if isinstance(r.commands[0], PingRoutingCommand)]
        ping = pings[0].commands[0]
        assert isinstance(ping, PingRoutingCommand)
        assert ping.host_id == record.id
        assert int(pings[0].header.flags) == 0x03
        assert ping.host_vm_state_report


async def test_failover_when_the_connected_ms_dies(tmp_path: Path) -> None:
    port1 = free_port()
    shared_ca(tmp_path)
    async with running_ms(tmp_path, "ms2", ping_interval=1) as ms2:
        with ms_process(tmp_path, "ms1", port1) as proc:
            hosts = f"127.0.0.1:{port1},127.0.0.1:{ms2.port}"
            config = agent_config(
                tmp_path, hosts, agent_dir(tmp_path, ms2.ca), **{"backoff.seconds": "5"}
            )
            async with running_agent(config) as agent:
                with trio.fail_after(10):
                    while agent.current_host != f"127.0.0.1:{port1}" or agent.session is None:
                        await trio.sleep(0.05)
                    await agent.session.is_ready.wait()
                killed = time.monotonic()
                proc.send_signal(signal.SIGKILL)
                await ms2.wait_for_request(is_startup, timeout=5)
                elapsed = time.monotonic() - killed
                await ms2.wait_for_host(GUID, timeout=5)
    # At once, not after backoff.seconds (5 s); the bench measures the exact figure. (A real
    # process is killed: wall time, bounded by what tells the two apart, not by speed.)
    assert elapsed < 5.0, elapsed


async def test_failover_when_the_ms_goes_silent(tmp_path: Path) -> None:
    async with (
        running_ms(tmp_path, "ms1", ping_interval=1) as ms1,
        running_ms(tmp_path, "ms2", ping_interval=1) as ms2,
    ):
        hosts = f"127.0.0.1:{ms1.port},127.0.0.1:{ms2.port}"
        config = agent_config(tmp_path, hosts, agent_dir(tmp_path, ms1.ca))
        with captured_logs() as logbuf:
            async with running_agent(config):
                await ms1.wait_for_host(GUID, timeout=10)
                ms1.silent = True
                await ms2.wait_for_host(GUID, timeout=10)
        assert "management server silent for 2 pings" in logbuf.getvalue()


async def test_reconnect_after_the_ms_closes_the_connection(tmp_path: Path) -> None:
    async with running_ms(tmp_path, ping_interval=1) as ms:
        config = agent_config(tmp_path, f"127.0.0.1:{ms.port}", agent_dir(tmp_path, ms.ca))
        async with running_agent(config):
            await ms.wait_for_host(GUID, timeout=10)
            closed = time.monotonic()
            await ms.disconnect(GUID)
            with trio.fail_after(10):
                while startups(ms) < 2:
                    await trio.sleep(0.05)
            again = time.monotonic() - closed
            await ms.wait_for_host(GUID, timeout=10)
    # The same (only) MS is not retried sooner than backoff.seconds (1 s here).
    assert again >= 0.95


async def test_one_request_counter_for_the_life_of_the_agent(tmp_path: Path) -> None:
    """As the Java agent's: a new connection goes on counting, it does not start at 0."""
    async with running_ms(tmp_path, ping_interval=1) as ms:
        config = agent_config(tmp_path, f"127.0.0.1:{ms.port}", agent_dir(tmp_path, ms.ca))
        async with running_agent(config):
            await ms.wait_for_request(
                lambda g, r: isinstance(r.commands[0], PingRoutingCommand), timeout=10
            )
            await ms.disconnect(GUID)
            with trio.fail_after(10):
                while startups(ms) < 2:
                    await trio.sleep(0.05)
            await ms.wait_for_host(GUID, timeout=10)
    sequences = [r.sequence for _, r in ms.received]
    second = [r.sequence for g, r in ms.received if is_startup(g, r)][1]
    assert sequences[0] == 0
    assert second > 1  # a startup and at least one ping went before it
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)


async def test_startup_reports_the_ms_list_the_ms_sent_last(tmp_path: Path) -> None:
    """msHostList is the agent's current ``host`` value, as the Java agent persists it."""
    async with running_ms(tmp_path, ping_interval=1) as ms:
        ms.ms_host_list, ms.lb_algorithm = [f"127.0.0.1:{ms.port}"], "roundrobin"
        config = agent_config(tmp_path, f"127.0.0.1:{ms.port}", agent_dir(tmp_path, ms.ca))
        async with running_agent(config) as agent:
            await ms.wait_for_host(GUID, timeout=10)
            assert agent.session is not None
            await agent.session.is_ready.wait()
            await ms.disconnect(GUID)
            with trio.fail_after(10):
                while startups(ms) < 2:
                    await trio.sleep(0.05)
    first, second = [r.commands[0] for g, r in ms.received if is_startup(g, r)][:2]
    assert isinstance(first, StartupRoutingCommand) and isinstance(second, StartupRoutingCommand)
    assert first.ms_host_list == f"127.0.0.1:{ms.port}"
    assert second.ms_host_list == f"127.0.0.1:{ms.port}@roundrobin"


async def test_send_startup_on_request(tmp_path: Path) -> None:
    async with running_ms(tmp_path, ping_interval=1) as ms:
        config = agent_config(tmp_path, f"127.0.0.1:{ms.port}", agent_dir(tmp_path, ms.ca))
        async with running_agent(config) as agent:
            await ms.wait_for_host(GUID, timeout=10)
            session = agent.session
            ms.request_startup_once = True
            with trio.fail_after(5):
                while startups(ms) < 2:
                    await trio.sleep(0.05)
            assert agent.session is session  # same connection, startup sent again


async def test_ready_refusal_disconnects_and_retries_later(tmp_path: Path) -> None:
    async with running_ms(tmp_path, ping_interval=1) as ms:
        ms.refuse_ready = "host is disabled by the operator"
        config = agent_config(tmp_path, f"127.0.0.1:{ms.port}", agent_dir(tmp_path, ms.ca))
        with captured_logs() as logbuf:
            async with running_agent(config):
                with trio.fail_after(10):
                    while startups(ms) < 2:
                        await trio.sleep(0.05)
                refused_state_written = (tmp_path / "agent-state" / "agent-state.json").exists()
                ms.refuse_ready = None
                record = await ms.wait_for_host(GUID, timeout=10)
        assert "host is disabled by the operator" in logbuf.getvalue()
        # A refused host keeps nothing of the identity the MS offered; an accepted one does.
        assert not refused_state_written
        state = json.loads((tmp_path / "agent-state" / "agent-state.json").read_text())
        assert state["host_id"] == record.id and state["host_uuid"] == record.uuid


async def test_unsupported_command_and_stop_on_error(tmp_path: Path) -> None:
    async with running_ms(tmp_path, ping_interval=1) as ms:
        config = agent_config(tmp_path, f"127.0.0.1:{ms.port}", agent_dir(tmp_path, ms.ca))
        async with running_agent(config):
            await ms.wait_for_host(GUID, timeout=10)
            foo = UnknownMessage(name="com.cloud.agent.api.FooCommand", fields={"x": 1})
            (answer,) = await ms.send_command(GUID, [foo])
            assert answer == UnsupportedAnswer(
                result=False,
                details="Unsupported command issued: com.cloud.agent.api.FooCommand.  "
                "Are you sure you got the right type of server?",
            )
            first, second = await ms.send_command(GUID, [foo, CheckHealthCommand()])
            assert isinstance(first, UnsupportedAnswer)
            assert second == Answer(result=False, details=STOPPED_BY_PREVIOUS_FAILURE)
            first, second = await ms.send_command(
                GUID, [foo, CheckHealthCommand()], stop_on_error=False
            )
            assert isinstance(second, CheckHealthAnswer) and second.result


class SlowCommand(Command):
    JAVA_CLASS = "test.SlowCommand"


class SlowInSequenceCommand(Command):
    JAVA_CLASS = "test.SlowInSequenceCommand"
    IN_SEQUENCE = True


def slow_handlers(record: list[tuple[str, str, float]], delay: float) -> HandlerRegistry:
    registry = HandlerRegistry.with_builtins()

    async def slow(cmd: Command, ctx: CommandContext) -> Message:
        tag = f"{cmd.wait}/{ctx.sequence}"
        record.append(("start", tag, trio.current_time()))
        await trio.sleep(delay)
        record.append(("end", tag, trio.current_time()))
        return Answer(result=True, details=tag)

    registry.register("test.SlowCommand", slow)
    registry.register("test.SlowInSequenceCommand", slow)
    return registry


def max_concurrency(record: list[tuple[str, str, float]]) -> int:
    running = peak = 0
    for kind, _, _ in sorted(record, key=lambda r: (r[2], r[0] == "start")):
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    return peak


async def test_in_sequence_requests_run_one_after_another_in_order(tmp_path: Path) -> None:
    record: list[tuple[str, str, float]] = []
    async with running_ms(tmp_path, ping_interval=1) as ms:
        config = agent_config(tmp_path, f"127.0.0.1:{ms.port}", agent_dir(tmp_path, ms.ca))
        async with running_agent(config, slow_handlers(record, 0.3)):
            await ms.wait_for_host(GUID, timeout=10)
            answers: list[str] = []

            async def send(i: int) -> None:
                await trio.sleep(i * 0.02)  # a known arrival order
                (a,) = await ms.send_command(GUID, [SlowInSequenceCommand(wait=i)])
                assert isinstance(a, Answer)
                answers.append(str(a.details))

            async with trio.open_nursery() as nursery:
                for i in range(4):
                    nursery.start_soon(send, i)
    assert max_concurrency(record) == 1
    starts = [tag.split("/")[0] for kind, tag, _ in record if kind == "start"]
    assert starts == ["0", "1", "2", "3"]


async def test_workers_limit_and_pings_stay_on_time(tmp_path: Path) -> None:
    record: list[tuple[str, str, float]] = []
    async with running_ms(tmp_path, ping_interval=1) as ms:
        config = agent_config(
            tmp_path, f"127.0.0.1:{ms.port}", agent_dir(tmp_path, ms.ca), workers="2"
        )
        async with running_agent(config, slow_handlers(record, 1.0)) as agent:
            await ms.wait_for_host(GUID, timeout=10)
            session = agent.session
            pings_before = sum(
                isinstance(r.commands[0], PingRoutingCommand) for _, r in ms.received
            )
            started = trio.current_time()
            async with trio.open_nursery() as nursery:
                for i in range(6):
                    nursery.start_soon(ms.send_command, GUID, [SlowCommand(wait=i)])
            took = trio.current_time() - started
            pings = sum(isinstance(r.commands[0], PingRoutingCommand) for _, r in ms.received)
            assert agent.session is session  # never declared silent
    assert max_concurrency(record) == 2
    assert took >= 2.9  # 6 commands of 1 s through 2 workers
    assert pings - pings_before >= 2  # pings every second while all workers were busy


@pytest.mark.parametrize("case", ["other_ca", "no_ca"])
async def test_refuses_unverified_management_servers(tmp_path: Path, case: str) -> None:
    async with running_ms(tmp_path, ping_interval=1) as ms:
        other = LabCA.create(tmp_path / "other-ca")
        ca = other if case == "other_ca" else None
        config = agent_config(tmp_path, f"127.0.0.1:{ms.port}", agent_dir(tmp_path, ca))
        with captured_logs() as logbuf:
            async with running_agent(config):
                await trio.sleep(1.5)
        assert ms.received == [] and ms.connected() == []
        text = logbuf.getvalue()
        if case == "other_ca":
            assert "certificate" in text and "connect failed" in text
        else:
            assert "no CA file" in text and "refusing to connect" in text


async def test_bootstrap_mode_connects_and_warns(tmp_path: Path) -> None:
    async with running_ms(tmp_path, ping_interval=1) as ms:
        config = agent_config(
            tmp_path,
            f"127.0.0.1:{ms.port}",
            agent_dir(tmp_path, None),
            **{"ssl.bootstrap.insecure": "true"},
        )
        with captured_logs() as logbuf:
            async with running_agent(config):
                await ms.wait_for_host(GUID, timeout=10)
        warnings = [json.loads(line) for line in logbuf.getvalue().splitlines()]
        assert any(w["level"] == "warning" and "NOT verified" in w["event"] for w in warnings)


async def test_no_key_material_in_logs(tmp_path: Path) -> None:
    async with running_ms(tmp_path, ping_interval=1) as ms:
        certs = agent_dir(tmp_path, ms.ca)
        secret = "s3cret-passphrase-value"
        config = agent_config(
            tmp_path, f"127.0.0.1:{ms.port}", certs, **{"keystore.passphrase": secret}
        )
        with captured_logs() as logbuf:
            async with running_agent(config):
                await ms.wait_for_host(GUID, timeout=10)
                await ms.send_command(GUID, [CheckHealthCommand()])
                await ms.disconnect(GUID)
                await ms.wait_for_host(GUID, timeout=10)
        text = logbuf.getvalue()
        key_body = (certs / "cloud.key").read_text().splitlines()[1]
        assert "PRIVATE KEY" not in text and key_body not in text
        assert secret not in text and secret not in repr(config)
        assert len(text.splitlines()) > 10  # the logs were really captured


async def test_ms_moves_the_agent_and_ms_shutdown_stops_it(tmp_path: Path) -> None:
    async with (
        running_ms(tmp_path, "ms1", ping_interval=1) as ms1,
        running_ms(tmp_path, "ms2", ping_interval=1) as ms2,
    ):
        config = agent_config(tmp_path, f"127.0.0.1:{ms1.port}", agent_dir(tmp_path, ms1.ca))
        async with running_agent(config) as agent:
            await ms1.wait_for_host(GUID, timeout=10)
            (answer,) = await ms1.send_command(
                GUID, [MigrateAgentConnectionCommand(ms_list=[f"127.0.0.1:{ms2.port}"])]
            )
            assert isinstance(answer, Answer) and answer.result
            await ms2.wait_for_host(GUID, timeout=10)
            (answer,) = await ms2.send_command(
                GUID, [ShutdownCommand(reason="deleteHost", remove_host=True)]
            )
            assert answer == Answer(result=True)
            with trio.fail_after(5):
                while agent.session is not None:
                    await trio.sleep(0.05)
            await trio.sleep(1.0)  # it must not come back
            assert agent.exit_code == 10
            assert ms2.connected() == [] and ms1.connected() == []


async def test_sighup_reload_keeps_a_healthy_session(tmp_path: Path) -> None:
    async with running_ms(tmp_path, ping_interval=1) as ms:
        props = tmp_path / "agent.properties"
        certs = agent_dir(tmp_path, ms.ca)
        lines = [
            "guid=agent1",
            f"host=127.0.0.1:{ms.port}",
            "hypervisor.uri=test:///default",
            f"cert.dir={certs}",
            f"state.dir={tmp_path / 'agent-state'}",
        ]
        props.write_text("\n".join(lines) + "\n")
        from agent.config import AgentConfig

        config = AgentConfig.load(props)
        async with running_agent(config) as agent:
            await ms.wait_for_host(GUID, timeout=10)
            session = agent.session
            props.write_text("\n".join([*lines, "log.level=debug"]) + "\n")
            await agent.reload()
            assert agent.config.log_level == "debug"
            await trio.sleep(1.5)
            assert agent.session is session


def test_sigterm_flow_as_the_ms_sees_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_ms(tmp_path, ping_interval=1) as ms:
            props = tmp_path / "agent.properties"
            props.write_text(
                "guid=agent1\n"
                f"host=127.0.0.1:{ms.port}\n"
                "hypervisor.uri=test:///default\n"
                f"cert.dir={agent_dir(tmp_path, ms.ca)}\n"
                f"state.dir={tmp_path / 'agent-state'}\n"
            )
            proc = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--config", str(props)],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            try:
                await ms.wait_for_host(GUID, timeout=20)
                proc.send_signal(signal.SIGTERM)
                _guid, request = await ms.wait_for_request(
                    lambda g, r: isinstance(r.commands[0], ShutdownCommand), timeout=10
                )
                code = await trio.to_thread.run_sync(lambda: proc.wait(timeout=15))
            finally:
                proc.kill()
            out = proc.stdout.read().decode() if proc.stdout else ""
            shutdown = request.commands[0]
            assert isinstance(shutdown, ShutdownCommand)
            assert shutdown.reason == "sig.kill"
            assert int(request.header.flags) == 0x07
            assert code == 0, out
            host = ms.db.get(GUID)
            assert host is not None and host.status == "Disconnected"
            events = [
                json.loads(line)["event"] for line in out.splitlines() if line.startswith("{")
            ]
            assert "agent stopped" in events

    trio.run(scenario)
