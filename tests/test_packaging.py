"""The systemd unit, the example agent.properties, and systemd notifications."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import javaproperties
import pytest
import trio

from agent.config import _KEYS, AgentConfig
from agent.daemon.app import Agent
from agent.daemon.sdnotify import Notifier
from tests.agent_env import agent_config, agent_dir, guid_of, running_ms

ROOT = Path(__file__).resolve().parent.parent


def test_example_properties_list_every_key_with_its_default() -> None:
    with (ROOT / "etc" / "agent.properties").open(encoding="latin-1") as fh:
        example = javaproperties.load(fh)
    assert set(example) == set(_KEYS)
    for key, (_attr, _factory, default) in _KEYS.items():
        assert example[key] == (default or ""), key
    # With a guid it is a valid configuration as it stands.
    AgentConfig.from_properties({**example, "guid": "x"})


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_unit_verifies(tmp_path: Path) -> None:
    unit = (ROOT / "systemd" / "kvm-agent.service").read_text()
    directives = [line for line in unit.splitlines() if not line.startswith("#")]
    # A libvirtd restart must not take the agent down: Wants=, never Requires=/BindsTo=.
    assert not any(line.startswith(("Requires=", "BindsTo=")) for line in directives)
    assert "Wants=network-online.target libvirtd.service" in directives
    binary = ROOT / ".venv" / "bin" / "kvm-agent"
    if not binary.exists():
        pytest.skip("the venv's kvm-agent is not installed")
    local = tmp_path / "kvm-agent.service"
    local.write_text(unit.replace("/usr/local/bin/kvm-agent", str(binary)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(local)], capture_output=True, text=True, timeout=60
    )
    complaints = [line for line in result.stderr.splitlines() if "kvm-agent.service" in line]
    assert result.returncode == 0 and not complaints, result.stderr


async def test_sd_notify_ready_status_watchdog_stopping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    address = tmp_path / "notify.sock"
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await sock.bind(str(address))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    messages: list[str] = []

    async def collect() -> None:
        while True:
            messages.append((await sock.recv(4096)).decode())

    async with running_ms(tmp_path, ping_interval=1) as ms:
        config = agent_config(tmp_path, f"127.0.0.1:{ms.port}", agent_dir(tmp_path, ms.ca))
        agent = Agent(config, notifier=Notifier(str(address)), handle_signals=False)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect)
            nursery.start_soon(agent.run)
            await ms.wait_for_host(guid_of("agent1"), timeout=10)
            await trio.sleep(0.5)
            agent.request_stop()
            with trio.fail_after(10):
                while not any("STOPPING=1" in m for m in messages):
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    ready = [m for m in messages if "READY=1" in m]
    assert len(ready) == 1 and "STATUS=registered with 127.0.0.1:" in ready[0]
    assert messages.index(ready[0]) > 0  # connecting status came first
    assert sum(m == "WATCHDOG=1" for m in messages) >= 3
    sock.close()


def test_notifier_is_a_no_op_without_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    notifier.ready("x")  # nothing to send to, nothing raised


def test_operations_guide_documents_every_key() -> None:
    guide = (ROOT / "docs" / "operations.md").read_text()
    missing = [key for key in _KEYS if f"`{key}`" not in guide]
    assert not missing, missing
