"""SIGHUP: one configuration at any moment, applied everywhere it is used; keys that only
a restart applies keep their value and are logged as such."""

from __future__ import annotations

import json
from pathlib import Path

import javaproperties
import trio

from agent.config import _KEYS, RELOADABLE, AgentConfig
from protocol.messages.migration import MigrateAnswer, MigrateCommand
from tests.agent_env import (
    ROOT,
    agent_dir,
    captured_logs,
    guid_of,
    running_agent,
    running_ms,
    write_agent_properties,
)
from tests.test_agent_session import SlowCommand, max_concurrency, slow_handlers

GUID = guid_of("agent1")


async def test_reload_applies_everywhere_at_once_and_names_what_needs_a_restart(
    tmp_path: Path,
) -> None:
    record: list[tuple[str, str, float]] = []
    async with running_ms(tmp_path, ping_interval=1) as ms:
        props, certs = tmp_path / "agent.properties", agent_dir(tmp_path, ms.ca)
        write_agent_properties(
            props, tmp_path, ms.port, certs, workers="1", **{"migration.max.outgoing": "2"}
        )
        async with running_agent(AgentConfig.load(props), slow_handlers(record, 0.5)) as agent:
            await ms.wait_for_host(GUID, timeout=10)
            session = agent.session
            write_agent_properties(
                props,
                tmp_path,
                ms.port,
                certs,
                workers="3",
                **{
                    "migration.max.outgoing": "1",
                    "hypervisor.uri": "qemu:///system",
                    "log.level": "debug",
                },
            )
            with captured_logs() as logbuf:
                await agent.reload()
            # Commands: three workers now.
            async with trio.open_nursery() as nursery:
                for i in range(3):
                    nursery.start_soon(ms.send_command, GUID, [SlowCommand(wait=i)])
            # Migrations: the new limit, seen by the migration code itself.
            agent.migrations.outgoing = 1  # one migration running
            (answer,) = await ms.send_command(GUID, [MigrateCommand(vm_name="test", dest_ip="x")])
            # A key only a restart applies: kept, and said so.
            assert agent.config.hypervisor_uri == "test:///default"
            assert agent.hypervisor.uri == "test:///default"
            assert agent.config.workers == 3 and agent.config.log_level == "debug"
            assert agent.session is session
            agent.migrations.outgoing = 0
    assert max_concurrency(record) == 3
    assert isinstance(answer, MigrateAnswer) and not answer.result
    assert "(migration.max.outgoing=1)" in (answer.details or "")
    events = [json.loads(line) for line in logbuf.getvalue().splitlines()]
    restart = [e for e in events if "needs a restart" in e["event"]]
    assert [e["key"] for e in restart] == ["hypervisor.uri"]


def test_the_keys_sighup_applies_are_listed_in_agent_properties() -> None:
    listed: set[str] = set()
    for line in (ROOT / "etc" / "agent.properties").read_text(encoding="latin-1").splitlines():
        if line.startswith("#   reload:"):
            listed.update(k.strip() for k in line.split(":", 1)[1].split(","))
    assert listed == set(RELOADABLE)
    assert set(_KEYS) > RELOADABLE
    with (ROOT / "etc" / "agent.properties").open(encoding="latin-1") as fh:
        assert set(javaproperties.load(fh)) == set(_KEYS)
