"""Flow control: a byte budget instead of a count, backpressure, and an MS that stops reading.

Real agents (in this process, or as a process where memory is measured) against the lab MS
or a hand-driven one, over real TLS on loopback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import trio
from attrs import frozen

from agent.handlers import HandlerRegistry
from agent.handlers.context import CommandContext
from agent.link.tasks import TaskQueue
from protocol import Flags, Header
from protocol.codec import encode_body
from protocol.messages.host import CheckHealthAnswer, CheckHealthCommand
from protocol.model import Answer, Command, Message, UnknownMessage, jfield
from tests.agent_env import (
    ROOT,
    agent_config,
    agent_dir,
    captured_logs,
    guid_of,
    raw_ms,
    running_agent,
    running_ms,
    shared_ca,
)

GUID = guid_of("agent1")
MiB = 1024 * 1024


@frozen
class PayloadCommand(Command):
    JAVA_CLASS: ClassVar[str] = "test.PayloadCommand"

    pad: str = jfield("pad", default="")


async def test_a_burst_of_cheap_commands_is_served_in_full(tmp_path: Path) -> None:
    # Five times the old limit of 1,000 waiting commands, in one write.
    burst = 5000
    async with raw_ms(tmp_path) as (port, accept):
        config = agent_config(
            tmp_path, f"127.0.0.1:{port}", agent_dir(tmp_path, shared_ca(tmp_path))
        )
        async with running_agent(config) as agent:
            link = await accept()
            await link.register(ping_interval=1)
            session = agent.session
            started = trio.current_time()
            await link.blast([[CheckHealthCommand()] for _ in range(burst)])
            responses, pings = await link.collect(burst, timeout=120)
            took = trio.current_time() - started
            assert agent.session is session  # the session lived through it
    answers = [r.answers[0] for r in responses]
    refused = [a for a in answers if not (isinstance(a, CheckHealthAnswer) and a.result)]
    assert len(answers) == burst and not refused, refused[:3]
    # Pings kept flowing while the burst was served: one per interval (1 s), or per two when
    # an answer came late.
    assert len(pings) >= int(took / 2.5), (len(pings), took)


async def test_backpressure_holds_no_more_than_the_budget_and_loses_nothing(
    tmp_path: Path,
) -> None:
    limit = 1 * MiB
    payload = 200 * 1024
    in_flight_seen: list[int] = []
    registry = HandlerRegistry.with_builtins()
    queues: list[TaskQueue] = []  # the agent's, once it runs (no handler sees the agent)

    async def slow(cmd: PayloadCommand, ctx: CommandContext) -> Message:
        in_flight_seen.append(queues[0].in_flight)
        await trio.sleep(0.05)
        return Answer(result=True, details=str(len(cmd.pad)))

    registry.register(PayloadCommand.JAVA_CLASS, slow)
    async with running_ms(tmp_path, ping_interval=1) as ms:
        config = agent_config(
            tmp_path,
            f"127.0.0.1:{ms.port}",
            agent_dir(tmp_path, ms.ca),
            workers="1",
            **{"command.buffer.bytes": str(limit)},
        )
        async with running_agent(config, registry) as agent:
            await ms.wait_for_host(GUID, timeout=10)
            queues.append(agent.tasks)
            answers: list[Message] = []

            async def one(i: int) -> None:
                # Incompressible, so that the wire size is the decoded size.
                pad = os.urandom(payload // 2).hex()
                answers.extend(
                    await ms.send_command(
                        GUID,
                        [PayloadCommand(pad=pad)],
                        timeout=60,
                    )
                )

            async with trio.open_nursery() as nursery:
                for i in range(30):
                    nursery.start_soon(one, i)
            tasks = agent.tasks
    assert len(answers) == 30 and all(getattr(a, "result", False) for a in answers)
    # About limit / payload requests held at once (plus the one that crossed the limit),
    # not all thirty.
    assert max(in_flight_seen) <= limit // payload + 2, max(in_flight_seen)
    assert tasks.budget.peak <= limit + 2 * payload, tasks.budget.peak


async def test_an_ms_that_stops_reading_is_lost_after_two_ping_intervals(tmp_path: Path) -> None:
    registry = HandlerRegistry.with_builtins()

    async def big_answer(cmd: PayloadCommand, ctx: CommandContext) -> Message:
        return Answer(result=True, details=os.urandom(64 * 1024).hex())  # ~128 KiB, incompressible

    registry.register(PayloadCommand.JAVA_CLASS, big_answer)
    async with raw_ms(tmp_path, rcvbuf=4096) as (port, accept):
        config = agent_config(
            tmp_path,
            f"127.0.0.1:{port}",
            agent_dir(tmp_path, shared_ca(tmp_path)),
            **{"ping.retries": "10"},  # pings alone would take 30 s to give up
        )
        with captured_logs() as logbuf:
            async with running_agent(config, registry):
                link = await accept()
                await link.register(ping_interval=3)
                # From now on this MS reads nothing: the answers fill the TCP buffers.
                for _ in range(200):
                    await link.send([PayloadCommand()])
                with trio.fail_after(20):
                    second = await accept()  # the agent gave up on the first and came back
                await second.register(ping_interval=3)
        assert "has read nothing the agent sent for 6s" in logbuf.getvalue()


BOMB_SECONDS = 4.0


def _vm_hwm_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmHWM")


async def test_gzip_bombs_while_the_ms_reads_nothing_keep_memory_bounded(tmp_path: Path) -> None:
    # Each message is 15 KiB on the wire and inflates to 15 MiB; the MS sends them as fast as
    # it can and reads nothing. Before the byte budget the agent passed 600 MB in 4 s.
    bomb = UnknownMessage(name="com.example.BombCommand", fields={"pad": "A" * (15 * MiB)})
    body, length, compressed = encode_body([bomb])
    assert compressed and len(body) < 64 * 1024
    async with raw_ms(tmp_path) as (port, accept):
        certs = agent_dir(tmp_path, shared_ca(tmp_path))
        props = tmp_path / "agent.properties"
        props.write_text(
            f"guid=bomb\nhost=127.0.0.1:{port}\nhypervisor.uri=test:///default\n"
            f"cert.dir={certs}\nstate.dir={tmp_path / 'state'}\nlog.level=warning\n"
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(props)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            link = await accept()
            await link.register(ping_interval=60)
            stream = link.stream
            sent = 0
            with trio.move_on_after(BOMB_SECONDS):
                while True:
                    header = Header(
                        flags=Flags.REQUEST | Flags.FROM_SERVER | Flags.COMPRESSED,
                        sequence=1000 + sent,
                        length=length,
                        mgmt_id=1,
                        agent_id=7,
                        via=7,
                    )
                    data = stream.conn.link.send_message(header.encode() + body)
                    async with stream._write_lock:
                        await stream._write(data)
                    sent += 1
            peak = _vm_hwm_mib(proc.pid)
            assert proc.poll() is None  # still running
        finally:
            proc.kill()
            proc.wait()
    assert sent > 20  # the agent took a flood (GiB once inflated), not a trickle
    # 64 MiB of budget, one message being decoded, and the interpreter itself.
    assert peak < 300, f"agent peaked at {peak} MiB after {sent} bombs"
