"""Bounded waits and the order of shutdown: a hung destination, a stalled handshake, and the
hypervisor connection outliving every command. The running_agent helper itself fails a
test whose agent does not stop within shutdown.grace.seconds + 5 s."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

from agent.daemon.app import Agent
from agent.handlers import HandlerRegistry
from agent.handlers.context import CommandContext
from agent.hypervisor.connection import HypervisorError
from lab.mgmt import CommandError
from protocol.messages.migration import MigrateAnswer, MigrateCommand
from protocol.model import Answer, Command, Message
from tests.agent_env import agent_config, agent_dir, guid_of, running_agent, running_ms

GUID = guid_of("agent1")


@contextmanager
def silent_listener() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word (nor reads one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield int(sock.getsockname()[1])


async def test_a_destination_that_never_answers_cannot_hold_the_answer(tmp_path: Path) -> None:
    with silent_listener() as port:
        async with running_ms(tmp_path, ping_interval=1) as ms:
            config = agent_config(tmp_path, f"127.0.0.1:{ms.port}", agent_dir(tmp_path, ms.ca))
            async with running_agent(config) as agent:
                await ms.wait_for_host(GUID, timeout=10)
                # The test driver fails migrateToURI3 at once; then the agent looks for the
                # VM on the destination, which accepts TCP and never answers.
                command = MigrateCommand(vm_name="test", dest_ip=f"127.0.0.1:{port}", wait=4)
                with trio.fail_after(4 + 3):  # the command's wait bounds the whole handling
                    (answer,) = await ms.send_command(GUID, [command], timeout=30)
                assert isinstance(answer, MigrateAnswer) and not answer.result
                assert "The VM is still running on this host" in (answer.details or "")
                assert (await agent.hypervisor.running_domains()).get("test") == "running"


async def test_sigterm_during_a_hung_destination_check_ends_in_time(tmp_path: Path) -> None:
    with silent_listener() as port:
        async with running_ms(tmp_path, ping_interval=1) as ms:
            config = agent_config(
                tmp_path,
                f"127.0.0.1:{ms.port}",
                agent_dir(tmp_path, ms.ca),
                **{"shutdown.grace.seconds": "1"},
            )
            async with running_agent(config) as agent, trio.open_nursery() as nursery:
                await ms.wait_for_host(GUID, timeout=10)

                async def migrate() -> None:
                    command = MigrateCommand(vm_name="test", dest_ip=f"127.0.0.1:{port}", wait=600)
                    try:
                        await ms.send_command(GUID, [command], timeout=60)
                    except CommandError:
                        pass  # the agent went away first

                nursery.start_soon(migrate)
                await trio.sleep(1.0)  # migrateToURI3 failed; the destination look hangs
                agent.request_stop()  # as SIGTERM does
                with trio.fail_after(1 + 5):  # shutdown.grace.seconds + 5
                    await agent.finished.wait()


async def test_a_stop_request_during_a_stalled_handshake_is_honoured_at_once(
    tmp_path: Path,
) -> None:
    with silent_listener() as port:
        config = agent_config(
            tmp_path,
            f"127.0.0.1:{port}",
            agent_dir(tmp_path, None),
            **{"handshake.timeout": "30", "ssl.bootstrap.insecure": "true"},
        )
        agent = Agent(config, handle_signals=False)
        ended = trio.Event()

        async def run() -> None:
            await agent.run()
            ended.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await trio.sleep(1.5)  # inside the TLS handshake, which the listener never answers
            agent.request_stop()
            with trio.fail_after(3):  # not after handshake.timeout (30 s)
                await ended.wait()


class HoldCommand(Command):
    JAVA_CLASS = "test.HoldCommand"


async def test_the_hypervisor_connection_outlives_every_command(tmp_path: Path) -> None:
    seen: list[object] = []
    registry = HandlerRegistry.with_builtins()

    async def hold(cmd: Command, ctx: CommandContext) -> Message:
        try:
            await trio.sleep_forever()
        finally:
            # Cancelled at the end of the grace period: libvirt must still be there, as a
            # migration's abort and outcome check need it.
            with trio.CancelScope(shield=True):
                try:
                    seen.append(await ctx.hypervisor.running_domains())
                except HypervisorError as exc:
                    seen.append(exc)
        return Answer(result=True)

    registry.register(HoldCommand.JAVA_CLASS, hold)
    async with running_ms(tmp_path, ping_interval=1) as ms:
        config = agent_config(
            tmp_path,
            f"127.0.0.1:{ms.port}",
            agent_dir(tmp_path, ms.ca),
            **{"shutdown.grace.seconds": "1"},
        )
        async with running_agent(config, registry) as agent, trio.open_nursery() as nursery:
            await ms.wait_for_host(GUID, timeout=10)

            async def send() -> None:
                try:
                    await ms.send_command(GUID, [HoldCommand()], timeout=30)
                except CommandError:
                    pass

            nursery.start_soon(send)
            with trio.fail_after(5):
                while agent.tasks.in_flight == 0:
                    await trio.sleep(0.02)
            agent.request_stop()
            with trio.fail_after(1 + 5):
                await agent.finished.wait()
    assert len(seen) == 1 and isinstance(seen[0], dict), seen
    assert "test" in seen[0]


def test_timeouts_of_calls_to_another_host_are_at_most_30_s() -> None:
    from agent.config import AgentConfig, ConfigError

    for key in ("connect.timeout", "handshake.timeout", "startup.timeout"):
        AgentConfig.from_properties({"guid": "g", key: "30"})
        for bad in ("31", "inf", "nan", "0"):
            with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
                AgentConfig.from_properties({"guid": "g", key: bad})
