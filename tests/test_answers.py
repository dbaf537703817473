"""Every request gets its answer: before the session it ended closes, and even when the
agent cannot encode the answer it meant to send."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from agent.handlers import HandlerRegistry
from agent.handlers.context import CommandContext
from agent.handlers.host import migrate_agent_connection
from protocol import LocalProtocolError, ProtocolError
from protocol.codec import encode_body
from protocol.messages.host import (
    CheckHealthAnswer,
    CheckHealthCommand,
    MigrateAgentConnectionAnswer,
    MigrateAgentConnectionCommand,
)
from protocol.model import Answer, Command, Message, UnknownMessage
from tests.agent_env import (
    agent_config,
    agent_dir,
    captured_logs,
    guid_of,
    running_agent,
    running_ms,
)

GUID = guid_of("agent1")


async def test_the_answer_that_ends_a_session_is_sent_before_it_ends(tmp_path: Path) -> None:
    registry = HandlerRegistry.with_builtins()

    async def slow_to_answer(cmd: MigrateAgentConnectionCommand, ctx: CommandContext) -> Message:
        answer = await migrate_agent_connection(cmd, ctx)  # asks to end the session
        await trio.sleep(0.5)  # its answer is not out yet when another request finishes
        return answer

    registry.register(MigrateAgentConnectionCommand, slow_to_answer)
    async with (
        running_ms(tmp_path, "ms1", ping_interval=1) as ms1,
        running_ms(tmp_path, "ms2", ping_interval=1) as ms2,
    ):
        config = agent_config(tmp_path, f"127.0.0.1:{ms1.port}", agent_dir(tmp_path, ms1.ca))
        async with running_agent(config, registry):
            await ms1.wait_for_host(GUID, timeout=10)
            results: dict[str, Message] = {}

            async def move() -> None:
                command = MigrateAgentConnectionCommand(ms_list=[f"127.0.0.1:{ms2.port}"])
                (results["move"],) = await ms1.send_command(GUID, [command], timeout=10)

            async def check() -> None:
                await trio.sleep(0.1)
                (results["check"],) = await ms1.send_command(
                    GUID, [CheckHealthCommand()], timeout=10
                )

            async with trio.open_nursery() as nursery:
                nursery.start_soon(move)
                nursery.start_soon(check)
            await ms2.wait_for_host(GUID, timeout=10)
    assert isinstance(results["check"], CheckHealthAnswer) and results["check"].result
    assert results["move"] == MigrateAgentConnectionAnswer(result=True)


class OddCommand(Command):
    JAVA_CLASS = "test.OddCommand"


def test_an_answer_without_a_json_form_is_a_local_error() -> None:
    odd = UnknownMessage(name="test.OddAnswer", fields={"result": True, "load": float("nan")})
    with pytest.raises(LocalProtocolError) as info:
        encode_body([odd])
    assert not isinstance(info.value, ProtocolError)  # the peer did nothing wrong


async def test_an_answer_that_cannot_be_encoded_still_answers_the_ms(tmp_path: Path) -> None:
    registry = HandlerRegistry.with_builtins()

    async def odd(cmd: Command, ctx: CommandContext) -> Message:
        return UnknownMessage(name="test.OddAnswer", fields={"result": True, "load": float("nan")})

    registry.register(OddCommand.JAVA_CLASS, odd)
    async with running_ms(tmp_path, ping_interval=1) as ms:
        config = agent_config(tmp_path, f"127.0.0.1:{ms.port}", agent_dir(tmp_path, ms.ca))
        with captured_logs() as logbuf:
            async with running_agent(config, registry) as agent:
                await ms.wait_for_host(GUID, timeout=10)
                session = agent.session
                (answer,) = await ms.send_command(GUID, [OddCommand()], timeout=5)
                assert isinstance(answer, Answer) and not answer.result
                assert "could not encode its answer" in (answer.details or "")
                # The session carries on: the next command is answered as usual.
                (again,) = await ms.send_command(GUID, [CheckHealthCommand()], timeout=5)
                assert isinstance(again, CheckHealthAnswer) and again.result
                assert agent.session is session
        events = [json.loads(line) for line in logbuf.getvalue().splitlines()]
        local = [e for e in events if e["event"].startswith("could not encode the answer")]
        assert local and local[0]["level"] == "error"
        assert not any(e["event"] in ("bad message", "session task failed") for e in events)
