"""state.dir: a cache the agent survives losing, that only one agent may use."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from agent.config import AgentConfig
from tests.agent_env import ROOT, agent_dir, captured_logs, guid_of, running_agent, running_ms

GUID = guid_of("agent1")


@pytest.fixture
def readonly_state(tmp_path: Path) -> Iterator[Path]:
    """A read-only state.dir. Root ignores file modes, so: a read-only bind mount."""
    state = tmp_path / "agent-state"
    state.mkdir()
    subprocess.run(["mount", "--bind", str(state), str(state)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(state)], check=True)
        with pytest.raises(OSError):
            (state / "probe").write_text("x")
        yield state
    finally:
        subprocess.run(["umount", str(state)], check=True)


def _props(path: Path, host: str, certs: Path, state: Path, *extra: str) -> Path:
    lines = [
        "guid=agent1",
        f"host={host}",
        "hypervisor.uri=test:///default",
        f"cert.dir={certs}",
        f"state.dir={state}",
        "backoff.seconds=1",
        "shutdown.grace.seconds=3",
        *extra,
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_a_read_only_state_dir_costs_nothing_but_a_logged_error(
    tmp_path: Path, readonly_state: Path
) -> None:
    async with running_ms(tmp_path, ping_interval=1) as ms:
        props = _props(
            tmp_path / "agent.properties",
            f"127.0.0.1:{ms.port}",
            agent_dir(tmp_path, ms.ca),
            readonly_state,
        )
        with captured_logs() as logbuf:
            async with running_agent(AgentConfig.load(props)) as agent:
                # The MS disconnects a host whose ReadyAnswer fails: it must succeed.
                record = await ms.wait_for_host(GUID, timeout=10)
                assert agent.state.current.host_id == record.id  # kept in memory
                session = agent.session
                await agent.reload()  # SIGHUP with a read-only state.dir
                await trio.sleep(1.5)
                assert agent.session is session
        assert "cannot write the state file" in logbuf.getvalue()


def test_a_state_dir_that_cannot_be_created_is_a_configuration_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    props = _props(tmp_path / "agent.properties", "127.0.0.1:1", tmp_path, blocker / "state")
    done = subprocess.run(
        [sys.executable, "-m", "agent", "run", "--config", str(props)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 78, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr  # one line, no traceback
    assert f"state.dir {blocker / 'state'} cannot be used" in done.stderr


async def test_a_second_agent_on_the_same_state_dir_refuses_to_start(tmp_path: Path) -> None:
    async with running_ms(tmp_path, ping_interval=1) as ms:
        props = _props(
            tmp_path / "agent.properties",
            f"127.0.0.1:{ms.port}",
            agent_dir(tmp_path, ms.ca),
            tmp_path / "agent-state",
        )
        async with running_agent(AgentConfig.load(props)):
            await ms.wait_for_host(GUID, timeout=10)
            done = await trio.to_thread.run_sync(
                lambda: subprocess.run(
                    [sys.executable, "-m", "agent", "run", "--config", str(props)],
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
            )
            assert done.returncode == 78, done.stderr
            assert "another kvm-agent is already running" in done.stderr
            assert len(ms.connected()) == 1  # it never registered
