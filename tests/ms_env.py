"""A scripted agent for tests of the lab management server: real TCP and TLS, answers
chosen per command class (and, if asked, held back for a while)."""

from __future__ import annotations

import contextlib
import math
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import trio
from attrs import define, field

from agent.certs.trust import load_trust_anchors
from agent.link.transport import ConnectionLost, MessageStream
from lab.ca import LabCA
from lab.ms import ManagementServer
from protocol import Message, Request, Session
from protocol.messages.host import (
    CheckHealthAnswer,
    CheckHealthCommand,
    HostVmStateReportEntry,
    PingAnswer,
    PingRoutingCommand,
    ReadyAnswer,
    ReadyCommand,
    StartupAnswer,
    StartupRoutingCommand,
)
from protocol.messages.network import CheckNetworkAnswer, CheckNetworkCommand
from protocol.messages.storage import (
    ModifyStoragePoolAnswer,
    ModifyStoragePoolCommand,
    StoragePoolInfo,
)
from protocol.model import Answer, Command

Reply = Callable[[Command], Message]


def pool_answer(cmd: Command) -> Message:
    """What the Java agent answers a ModifyStoragePoolCommand (1 GiB, 400 MiB free)."""
    assert isinstance(cmd, ModifyStoragePoolCommand) and cmd.pool is not None
    info = StoragePoolInfo(
        host=cmd.pool.host,
        local_path=cmd.local_path,
        host_path=cmd.pool.path,
        pool_type=cmd.pool.type,
        capacity_bytes=1 << 30,
        available_bytes=400 << 20,
    )
    return ModifyStoragePoolAnswer(pool_info=info, template_info={})


# What a Java agent answers the connect sequence with.
GOOD: dict[type[Message], Reply] = {
    ReadyCommand: lambda c: ReadyAnswer(result=True, details_map={}),
    CheckNetworkCommand: lambda c: CheckNetworkAnswer(result=True),
    ModifyStoragePoolCommand: pool_answer,
    CheckHealthCommand: lambda c: CheckHealthAnswer(result=True, details="resource is alive"),
}


def agent_tls_context(
    trust: LabCA, tmp_path: Path, *, cert_from: LabCA | None = None, name: str = "agent"
) -> ssl.SSLContext:
    """An agent's context: trusts ``trust``; presents a certificate of ``cert_from``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # the Java agent does none; the MS presents its CA cert
    # As the agent trusts it: CloudStack's CA certificate is no fit server certificate
    # for OpenSSL without an explicit serverAuth trust setting (agent.certs.trust).
    load_trust_anchors(ctx, trust.cert_pem, source="the test's CA")
    if cert_from is not None:
        key_pem, cert_pem = cert_from.issue(f"{name}.test", sans=["127.0.0.1"])
        (tmp_path / f"{name}.key").write_bytes(key_pem)
        (tmp_path / f"{name}.crt").write_bytes(cert_pem)
        ctx.load_cert_chain(tmp_path / f"{name}.crt", tmp_path / f"{name}.key")
    return ctx


def client_context(ca: LabCA, tmp_path: Path) -> ssl.SSLContext:
    """An agent's context with a certificate of ``ca``, trusting ``ca``."""
    return agent_tls_context(ca, tmp_path, cert_from=ca)


@define(eq=False)
class ScriptedAgent:
    """Answers each command with ``replies[type]`` (a plain ``Answer()`` otherwise), after
    ``delays[type]`` seconds if given; remembers what came and when its answers left."""

    stream: MessageStream
    replies: dict[type[Message], Reply]
    delays: dict[type[Message], float]
    seen: list[tuple[float, Request]] = field(factory=list)  # (arrival time, request)
    answered: list[tuple[float, Request]] = field(factory=list)
    closed: trio.Event = field(factory=trio.Event)
    _changed: trio.Event = field(factory=trio.Event)

    @classmethod
    async def connect(
        cls,
        nursery: trio.Nursery,
        ms: ManagementServer,
        ctx: ssl.SSLContext,
        replies: dict[type[Message], Reply] | None = None,
        delays: dict[type[Message], float] | None = None,
    ) -> ScriptedAgent:
        stream = await MessageStream.connect(
            "127.0.0.1", ms.port, ctx, Session.for_agent(), connect_timeout=5, handshake_timeout=5
        )
        agent = cls(stream, dict(GOOD if replies is None else replies), dict(delays or {}))
        send, receive = trio.open_memory_channel[Request](math.inf)
        nursery.start_soon(agent._read, send)
        nursery.start_soon(agent._answer_all, receive, nursery)
        return agent

    async def _read(self, send: trio.MemorySendChannel[Request]) -> None:
        with contextlib.suppress(ConnectionLost):
            await self.stream.run(send.send_nowait)
        self.closed.set()
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _answer_all(
        self, receive: trio.MemoryReceiveChannel[Request], nursery: trio.Nursery
    ) -> None:
        async for request in receive:
            self.seen.append((trio.current_time(), request))
            self._notify()
            nursery.start_soon(self._answer, request)

    async def _answer(self, request: Request) -> None:
        first = request.commands[0]
        await trio.sleep(self.delays.get(type(first), 0))
        answers = []
        for command in request.commands:
            reply = self.replies.get(type(command))
            assert isinstance(command, Command)
            answers.append(reply(command) if reply is not None else Answer())
        with contextlib.suppress(ConnectionLost):
            await self.stream.respond(request, answers)
            self.answered.append((trio.current_time(), request))
            self._notify()

    def commands(self) -> list[Message]:
        return [r.commands[0] for _, r in self.seen]

    async def wait_for(self, kind: type[Message], count: int = 1, timeout: float = 10) -> Message:
        """The ``count``-th command of that class to arrive."""
        with trio.fail_after(timeout):
            while True:
                found = [c for c in self.commands() if isinstance(c, kind)]
                if len(found) >= count:
                    return found[count - 1]
                await self._changed.wait()

    async def startup(self, guid: str, *, host_os: str = "Debian", ip: str = "192.0.2.10") -> None:
        startup = StartupRoutingCommand(
            guid=guid,
            name=guid.split("-")[0],
            data_center="default",
            private_ip_address=ip,
            host_details={"secured": "false", "Host.OS": host_os},
        )
        response = await self.stream.request([startup], timeout=5)
        assert isinstance(response.answers[0], StartupAnswer)

    async def ping(
        self, host_id: int, vms: dict[str, HostVmStateReportEntry] | None = None
    ) -> PingAnswer:
        ping = PingRoutingCommand(host_id=host_id, host_vm_state_report=vms or {})
        response = await self.stream.request([ping], stop_on_error=True, timeout=5)
        answer = response.answers[0]
        assert isinstance(answer, PingAnswer)
        return answer


@contextlib.asynccontextmanager
async def serving(server: ManagementServer) -> AsyncIterator[ManagementServer]:
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            yield server
            nursery.cancel_scope.cancel()
    finally:
        server.close()
