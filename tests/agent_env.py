"""Helpers to run lab management servers and agents in tests (real TLS on loopback)."""

from __future__ import annotations

import io
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio

from agent import logs
from agent.config import AgentConfig, host_guid
from agent.daemon.app import Agent
from agent.handlers import HandlerRegistry
from agent.link.transport import ConnectionLost, MessageStream
from lab.ca import LabCA
from lab.mgmt import ManagementServer
from protocol import Message, Request, Response, Session
from protocol.messages.host import (
    PingAnswer,
    PingRoutingCommand,
    StartupAnswer,
    StartupRoutingCommand,
)
from tests.cert_env import cloudstack_ca

ROOT = Path(__file__).resolve().parent.parent


def guid_of(name: str) -> str:
    return host_guid(name)


def write_agent_properties(path: Path, base: Path, port: int, certs: Path, **keys: str) -> None:
    """An agent.properties for agent1 on libvirt's test driver against the MS on ``port``;
    ``keys`` add or replace keys (tests rewrite it before a SIGHUP)."""
    values = {
        "guid": "agent1",
        "host": f"127.0.0.1:{port}",
        "hypervisor.uri": "test:///default",
        "cert.dir": str(certs),
        "state.dir": str(base / "agent-state"),
        "backoff.seconds": "1",
        "shutdown.grace.seconds": "3",
        **keys,
    }
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def shared_ca(base: Path) -> LabCA:
    return cloudstack_ca(base / "shared-ca")


def ms_state_dir(base: Path, name: str, ca: LabCA) -> Path:
    """A state dir for one MS whose CA is the shared one (all MSes of a cloud share it)."""
    state = base / name
    if not (state / "ca").exists():
        shutil.copytree(base / "shared-ca", state / "ca")
    return state


@asynccontextmanager
async def running_ms(base: Path, name: str = "ms1", **kw: Any) -> AsyncIterator[ManagementServer]:
    ca = shared_ca(base)
    ms = ManagementServer.create(state_dir=ms_state_dir(base, name, ca), **kw)
    async with trio.open_nursery() as nursery:
        await nursery.start(ms.serve)
        try:
            yield ms
        finally:
            nursery.cancel_scope.cancel()
    ms.close()


@contextmanager
def ms_process(
    base: Path, name: str, port: int, ping_interval: int = 1
) -> Iterator[subprocess.Popen[bytes]]:
    """An MS in its own process, so a test can kill it for real (SIGKILL)."""
    shared_ca(base)
    state = ms_state_dir(base, name, shared_ca(base))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lab.mgmt",
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--state-dir",
            str(state),
            "--ping-interval",
            str(ping_interval),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"MS {name} did not start")
        yield proc
    finally:
        proc.kill()
        proc.wait()


def agent_dir(base: Path, ca: LabCA | None, *, with_client_cert: bool = True) -> Path:
    certs = base / "agent-certs"
    certs.mkdir(parents=True, exist_ok=True)
    if ca is not None:
        (certs / "cloud.ca.crt").write_bytes(ca.cert_pem)
        if with_client_cert:
            ca.write_agent_set(certs, "agent.test", sans=("127.0.0.1",))
    return certs


def agent_config(base: Path, hosts: str, certs: Path, **overrides: str) -> AgentConfig:
    props = {
        "guid": "agent1",
        "host": hosts,
        "hypervisor.uri": "test:///default",
        "cert.dir": str(certs),
        "state.dir": str(base / "agent-state"),
        "backoff.seconds": "1",  # the smallest allowed
        "connect.timeout": "2",
        "handshake.timeout": "2",
        "ping.retries": "2",
        "shutdown.grace.seconds": "3",
    }
    props.update(overrides)
    return AgentConfig.from_properties(props)


@asynccontextmanager
async def running_agent(
    config: AgentConfig, handlers: HandlerRegistry | None = None
) -> AsyncIterator[Agent]:
    """An agent in this process. On leaving, it is asked to stop as SIGTERM would, and the
    test FAILS if it has not ended within shutdown.grace.seconds + 5 s, the bound promised
    to systemd."""
    agent = Agent(config, handlers=handlers, handle_signals=False)
    limit = config.shutdown_grace + 5
    hung = False
    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent.run)
        try:
            yield agent
        finally:
            agent.request_stop()
            with trio.move_on_after(limit):
                await agent.finished.wait()
            if not agent.finished.is_set():
                hung = True
                nursery.cancel_scope.cancel()
    if hung:
        pytest.fail(
            f"the agent did not stop within shutdown.grace.seconds + 5 = {limit:g}s "
            "after a stop request"
        )


@contextmanager
def captured_logs(level: str = "debug") -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    logs.configure(level, stream=buffer, json=True)
    try:
        yield buffer
    finally:
        structlog.reset_defaults()


class RawLink:
    """One agent connection on the hand-driven MS: it reads only when told to."""

    def __init__(self, stream: MessageStream) -> None:
        self.stream = stream

    async def read_request(self, predicate: Any = None, timeout: float = 10) -> Request:
        """Read until a request (matching ``predicate``) arrives; responses are dropped."""
        conn = self.stream.conn
        with trio.fail_after(timeout):
            while True:
                while (event := conn.next_event()) is not None:
                    if isinstance(event, Request) and (predicate is None or predicate(event)):
                        return event
                data = await self.stream._read()
                if not data:
                    raise ConnectionLost("the agent closed the connection")
                conn.receive_data(data)

    async def register(self, ping_interval: int, host_id: int = 7) -> None:
        """Take the agent's startup and answer it (no ReadyCommand)."""
        startup = await self.read_request(
            lambda r: isinstance(r.commands[0], StartupRoutingCommand)
        )
        self.stream.session.agent_id = host_id
        answer = StartupAnswer(host_id=host_id, ping_interval=ping_interval, result=True)
        await self.stream.respond(startup, [answer])

    async def send(self, commands: list[Message]) -> None:
        """A request whose answer this MS will never read."""
        await self.stream.send(commands)

    async def blast(self, requests: list[list[Message]]) -> None:
        """Send many requests as fast as it gets: encoded first, then one write."""
        conn = self.stream.conn
        async with self.stream._write_lock:  # sealed in the order they leave
            data = b"".join(conn.send_request(commands)[1] for commands in requests)
            await self.stream._write(data)

    async def collect(self, count: int, timeout: float) -> tuple[list[Response], list[float]]:
        """Read until ``count`` responses arrived, answering the agent's pings meanwhile.
        Returns the responses and the times the pings arrived."""
        conn = self.stream.conn
        responses: list[Response] = []
        pings: list[float] = []
        with trio.fail_after(timeout):
            while len(responses) < count:
                while (event := conn.next_event()) is not None:
                    if isinstance(event, Response):
                        responses.append(event)
                    elif isinstance(event, Request) and isinstance(
                        event.commands[0], PingRoutingCommand
                    ):
                        pings.append(trio.current_time())
                        await self.stream.respond(event, [PingAnswer(send_startup=False)])
                data = await self.stream._read()
                if not data:
                    raise ConnectionLost("the agent closed the connection")
                conn.receive_data(data)
        return responses, pings

    async def closed_by_agent(self, timeout: float) -> bool:
        """Read (and drop) everything until the agent closes; False if it does not."""
        with trio.move_on_after(timeout):
            try:
                while await self.stream._read():
                    pass
            except ConnectionLost:
                pass
            return True
        return False


@asynccontextmanager
async def raw_ms(base: Path, *, rcvbuf: int | None = None) -> AsyncIterator[tuple[int, Any]]:
    """A management server driven by hand, for MSes that misbehave at the socket level
    (stop reading, say). Yields (port, accept) where ``await accept()`` is a RawLink."""
    ca = shared_ca(base)
    context = ca.server_context()
    sock = trio.socket.socket()
    if rcvbuf is not None:  # set before listen(): accepted sockets inherit it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    await sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    listener = trio.SocketListener(sock)
    port = sock.getsockname()[1]

    async def accept() -> RawLink:
        tcp = await listener.accept()
        stream = await MessageStream.accept(
            tcp, context, Session.for_management(1), peer="agent", handshake_timeout=10
        )
        return RawLink(stream)

    try:
        yield port, accept
    finally:
        await listener.aclose()
