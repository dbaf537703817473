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

import structlog
import trio

from agent import logs
from agent.commands import HandlerRegistry
from agent.config import AgentConfig
from agent.daemon import Agent
from lab.ca import LabCA
from lab.mgmt import ManagementServer
from tests.cert_env import cloudstack_ca

ROOT = Path(__file__).resolve().parent.parent


def guid_of(name: str) -> str:
    return f"{name}-LibvirtComputingResource"


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
        "backoff.seconds": "0.5",
        "connect.timeout": "2",
        "handshake.timeout": "2",
        "ping.retries": "2",
    }
    props.update(overrides)
    return AgentConfig.from_properties(props)


@asynccontextmanager
async def running_agent(
    config: AgentConfig, handlers: HandlerRegistry | None = None
) -> AsyncIterator[Agent]:
    agent = Agent(config, handlers=handlers, handle_signals=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent.run)
        try:
            yield agent
        finally:
            agent.request_stop()
            with trio.move_on_after(5):
                while agent.session is not None or not agent._stopping:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()


@contextmanager
def captured_logs(level: str = "debug") -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    logs.configure(level, stream=buffer, json=True)
    try:
        yield buffer
    finally:
        structlog.reset_defaults()
