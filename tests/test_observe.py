"""The operators' view (issue 13): Prometheus metrics after real sessions with lab
management servers, scraped over HTTP; `kvm-agent status` against a running agent process
and against none; and an idle registered agent that never loaded what it does not need."""

from __future__ import annotations

import json
import signal
import socket
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import trio
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from agent.config import ConfigError
from agent.handlers import HandlerRegistry
from agent.observe.observer import NOOP, Observer, observer
from agent.observe.recorder import Recorder
from agent.observe.report import EXIT_NOT_REGISTERED, EXIT_NOT_RUNNING, EXIT_REGISTERED
from agent.observe.status import snapshot
from lab.mgmt import ManagementServer
from protocol.messages.host import CheckHealthCommand
from protocol.messages.migration import MigrateAnswer, MigrateCommand
from protocol.model import UnknownMessage
from tests.agent_env import (
    ROOT,
    agent_config,
    agent_dir,
    free_port,
    guid_of,
    ms_state_dir,
    running_agent,
    running_ms,
    shared_ca,
)

GUID = guid_of("agent1")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=5) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def scrape(url: str) -> Samples:
    return await trio.to_thread.run_sync(_scrape, url)


async def wait_for_sample(url: str, name: str, value: float, timeout: float = 15) -> Samples:
    with trio.fail_after(timeout):
        while True:
            samples = await scrape(url)
            if samples.get((name, ())) == value:
                return samples
            await trio.sleep(0.1)


def _not_after(cert_dir: Path) -> float:
    cert = x509.load_pem_x509_certificate((cert_dir / "cloud.crt").read_bytes())
    return cert.not_valid_after_utc.timestamp()


async def test_metrics_after_sessions_with_lab_management_servers(tmp_path: Path) -> None:
    port2, metrics_port = free_port(), free_port()
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    handled = {name.rsplit(".", 1)[-1] for name in HandlerRegistry.with_builtins()._handlers}
    ca = shared_ca(tmp_path)
    ms1 = ManagementServer.create(state_dir=ms_state_dir(tmp_path, "ms1", ca), ping_interval=1)
    ms2 = ManagementServer.create(
        state_dir=ms_state_dir(tmp_path, "ms2", ca), port=port2, ping_interval=1
    )
    async with trio.open_nursery() as servers:
        ms1_scope = trio.CancelScope()

        async def serve_ms1(task_status: trio.TaskStatus[ManagementServer]) -> None:
            with ms1_scope:
                await ms1.serve(task_status=task_status)

        await servers.start(serve_ms1)
        certs = agent_dir(tmp_path, ca)
        config = agent_config(
            tmp_path,
            f"127.0.0.1:{ms1.port},127.0.0.1:{port2}",
            certs,
            **{"metrics.listen": f"127.0.0.1:{metrics_port}"},
        )
        async with running_agent(config):
            await ms1.wait_for_host(GUID, timeout=10)
            for _ in range(3):
                await ms1.send_command(GUID, [CheckHealthCommand()])
            unknown = UnknownMessage(name="com.cloud.agent.api.NoSuchCommand", fields={})
            await ms1.send_command(GUID, [unknown])
            # libvirt's test driver refuses peer-to-peer migration: a real failed job
            (answer,) = await ms1.send_command(
                GUID, [MigrateCommand(vm_name="test", dest_ip="127.0.0.1", wait=30)]
            )
            assert isinstance(answer, MigrateAnswer) and not answer.result
            samples = await scrape(url)

            def count(command: str, result: str) -> float:
                labels = (("command", command), ("result", result))
                return samples.get(("kvm_agent_commands_total", labels), 0)

            assert count("CheckHealthCommand", "true") == 3
            assert count("other", "false") == 1  # an unknown class, under one label
            assert count("MigrateCommand", "false") == 1
            histogram = (
                "kvm_agent_command_duration_seconds_count",
                (("command", "CheckHealthCommand"),),
            )
            assert samples[histogram] == 3
            commands = {
                dict(labels)["command"]
                for name, labels in samples
                if name == "kvm_agent_commands_total"
            }
            assert commands <= handled | {"other"} and "NoSuchCommand" not in commands
            assert samples[("kvm_agent_migrations_total", (("outcome", "failed"),))] == 1
            assert samples[("kvm_agent_migrations_total", (("outcome", "completed"),))] == 0
            assert samples[("kvm_agent_migration_duration_seconds_count", ())] == 1
            assert samples[("kvm_agent_session_up", ())] == 1
            assert samples[("kvm_agent_libvirt_connected", ())] == 1
            assert samples[("kvm_agent_secured", ())] == 0  # no libvirtd TLS here
            expiry = ("kvm_agent_certificate_expiry_timestamp_seconds", ())
            assert samples[expiry] == _not_after(certs)
            assert samples[("kvm_agent_commands_in_flight", ())] == 0
            assert samples[("kvm_agent_failovers_total", ())] == 0
            assert samples[("process_resident_memory_bytes", ())] > 0
            with pytest.raises(urllib.error.HTTPError, match="404"):
                await scrape(f"http://127.0.0.1:{metrics_port}/")  # only /metrics is served

            # The first MS goes; the other is not up yet: the agent is not registered.
            ms1_scope.cancel()
            await wait_for_sample(url, "kvm_agent_session_up", 0)
            # The other comes up: the agent registers there, a failover.
            await servers.start(ms2.serve)
            await ms2.wait_for_host(GUID, timeout=20)
            samples = await wait_for_sample(url, "kvm_agent_session_up", 1)
            assert samples[("kvm_agent_failovers_total", ())] == 1
            # Counters live as long as the agent, not a session.
            assert count("CheckHealthCommand", "true") == 3
        servers.cancel_scope.cancel()
    ms1.close()
    ms2.close()
    with pytest.raises(urllib.error.URLError):
        await scrape(url)  # the agent stopped: nothing listens any more


@pytest.mark.parametrize("value", [":9108", "localhost", "127.0.0.1:0", "10.0.0.1:70000", "a b:1"])
def test_metrics_listen_needs_an_address_and_a_port(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match=r"'metrics\.listen'"):
        agent_config(tmp_path, "127.0.0.1", tmp_path, **{"metrics.listen": value})


# --- kvm-agent status, and what an idle agent has loaded --------------------------------

# The agent as systemd runs it (`kvm-agent run`), plus a SIGUSR1 handler that writes the
# names of the modules it has imported: the test asks an idle, registered agent.
AGENT = """
import json, signal, sys
def dump(*_):
    with open(sys.argv[1] + ".tmp", "w") as out:
        json.dump(sorted(sys.modules), out)
    import os; os.replace(sys.argv[1] + ".tmp", sys.argv[1])
signal.signal(signal.SIGUSR1, dump)
from agent.cli import main
sys.exit(main(["run", "--config", sys.argv[2]]))
"""
# What an idle agent must not carry (issue 13: ~10 MiB for cryptography alone).
NOT_WHEN_IDLE = ("cryptography", "prometheus_client", "agent.certs.keys", "agent.observe.metrics")


def _write_properties(path: Path, props: dict[str, str]) -> Path:
    path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    return path


async def kvm_agent_status(props: Path, *args: str) -> tuple[int, str, str]:
    done = await trio.run_process(
        [sys.executable, "-m", "agent", "status", "--config", str(props), *args],
        cwd=ROOT,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def status_until(props: Path, code: int, timeout: float = 20) -> tuple[str, str]:
    with trio.fail_after(timeout):
        while True:
            got, out, err = await kvm_agent_status(props, "--json")
            if got == code:
                return out, err
            await trio.sleep(0.2)


async def test_status_of_an_idle_registered_agent_process(tmp_path: Path) -> None:
    modules = tmp_path / "modules.json"
    state = tmp_path / "agent-state"
    async with running_ms(tmp_path, ping_interval=1) as ms:
        certs = agent_dir(tmp_path, ms.ca)  # registered with certificates, as the bench runs it
        props = _write_properties(
            tmp_path / "agent.properties",
            {
                "guid": "agent1",
                "host": f"127.0.0.1:{ms.port}",
                "hypervisor.uri": "test:///default",
                "cert.dir": str(certs),
                "state.dir": str(state),
                "backoff.seconds": "1",
                "ping.retries": "2",
            },
        )
        log = (tmp_path / "agent.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-c", AGENT, str(modules), str(props)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            record = await ms.wait_for_host(GUID, timeout=30)
            out, _ = await status_until(props, EXIT_REGISTERED)
            doc = json.loads(out)
            assert doc["registered"] is True
            assert doc["management_server"] == f"127.0.0.1:{ms.port}"
            assert doc["host_id"] == record.id
            assert doc["guid"] == GUID
            assert doc["secured"] is False  # evaluated at registration: no libvirtd TLS here
            assert any("libvirtd is not configured for TLS" in r for r in doc["secured_reasons"])
            cert = x509.load_pem_x509_certificate((certs / "cloud.crt").read_bytes())
            assert doc["certificate"]["not_after"] == cert.not_valid_after_utc.isoformat()
            assert doc["libvirt"] == {"uri": "test:///default", "connected": True, "error": None}
            assert doc["commands_in_flight"] == 0 and doc["migrations_running"] == 0
            assert doc["last_migration"] is None and doc["metrics"] is None
            assert doc["agent"]["pid"] == proc.pid

            code, text, _ = await kvm_agent_status(props)
            assert code == EXIT_REGISTERED
            lines = text.splitlines()
            assert lines[0] == "kvm-agent: registered"
            assert f"127.0.0.1:{ms.port}, since " in text
            assert f"host id            {record.id} (guid {GUID})" in text
            assert "secured            NO: " in text and "libvirtd is not configured" in text
            assert f"valid until {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC" in text
            assert "libvirt            connected (test:///default)" in text
            assert "metrics            off" in text

            socket_file = state / "status.sock"
            mode = socket_file.stat().st_mode
            assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
            assert [p.name for p in state.iterdir() if p.name.startswith(".status-")] == []

            proc.send_signal(signal.SIGUSR1)
            with trio.fail_after(10):
                while not modules.exists():
                    await trio.sleep(0.05)
            loaded = json.loads(modules.read_text())
            assert "agent.certs.system_pki" in loaded  # it did check its certificate ...
            carried = [m for m in loaded if m.split(".")[0] in NOT_WHEN_IDLE or m in NOT_WHEN_IDLE]
            assert carried == []  # ... without what only certificate commands need
        except BaseException:
            proc.kill()
            raise
    # The MS is gone: the agent runs, not registered, and says why.
    try:
        out, err = await status_until(props, EXIT_NOT_REGISTERED)
        assert json.loads(out)["registered"] is False
        code, text, _ = await kvm_agent_status(props)
        assert code == EXIT_NOT_REGISTERED
        assert text.startswith("kvm-agent: NOT registered: ")
        assert f"127.0.0.1:{ms.port}" in text.splitlines()[0]
    finally:
        proc.send_signal(signal.SIGTERM)
        await trio.to_thread.run_sync(proc.wait, 20)
        log.close()
    assert proc.returncode == 0
    assert not (state / "status.sock").exists()  # removed at exit
    code, text, err = await kvm_agent_status(props)
    assert code == EXIT_NOT_RUNNING and text == ""
    assert "the agent is not running (no status socket" in err


async def test_status_without_an_agent(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    props = _write_properties(tmp_path / "agent.properties", {"guid": "x", "state.dir": str(state)})
    code, out, err = await kvm_agent_status(props, "--json")
    assert code == EXIT_NOT_RUNNING
    assert json.loads(out) == {
        "running": False,
        "error": f"the agent is not running (no status socket {state / 'status.sock'}; "
        "is state.dir right?)",
    }
    # A socket left by an agent that died: nobody listens.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(state / "status.sock"))
    stale.close()
    code, out, err = await kvm_agent_status(props)
    assert code == EXIT_NOT_RUNNING and out == ""
    assert "nothing listens on" in err and "a stale socket" in err
    code, _, err = await kvm_agent_status(tmp_path / "missing.properties")
    assert code == 78 and "missing.properties does not exist" in err


def test_failover_is_registering_elsewhere_after_a_loss() -> None:
    seen: list[tuple[str, str]] = []

    class Sink(Observer):
        def failover(self, lost: str, now: str) -> None:
            seen.append((lost, now))

    recorder = Recorder(Sink())
    recorder.session_up("a:8250")
    recorder.session_down("a:8250", "move", "the MS sent us elsewhere")
    recorder.session_up("b:8250")  # asked to move: no failover
    recorder.session_down("b:8250", "lost", "connection reset")
    recorder.connect_failed("b:8250", "refused")
    recorder.session_up("b:8250")  # the same MS again: no failover
    assert seen == [] and recorder.facts.failovers == 0
    recorder.session_down("b:8250", "lost", "connection reset")
    recorder.session_up("a:8250")
    assert seen == [("b:8250", "a:8250")] and recorder.facts.failovers == 1
    assert recorder.facts.host == "a:8250" and recorder.facts.since is not None
    recorder.session_down("a:8250", "stop", "agent stopping")
    assert recorder.facts.host is None and recorder.facts.last_end is not None
    assert recorder.facts.last_end.outcome == "stop"


def test_outside_an_agent_the_hooks_do_nothing() -> None:
    assert observer() is NOOP
    observer().command_done("com.cloud.agent.api.CheckHealthCommand", True, True, 0.1)


async def test_a_metrics_address_in_use_is_reported_and_the_agent_runs_on(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with running_ms(tmp_path, ping_interval=1) as ms:
            config = agent_config(
                tmp_path,
                f"127.0.0.1:{ms.port}",
                agent_dir(tmp_path, ms.ca),
                **{"metrics.listen": f"127.0.0.1:{port}"},
            )
            async with running_agent(config) as agent:
                await ms.wait_for_host(GUID, timeout=10)
                doc = await snapshot(agent)
    assert doc["registered"] is True
    assert doc["metrics"] == {
        "listen": f"127.0.0.1:{port}",
        "url": None,
        "error": f"cannot serve metrics on 127.0.0.1:{port} (see the log)",
    }
