"""Migration logic that needs no second host: libvirt's test driver and pure helpers."""

from __future__ import annotations

from pathlib import Path

from agent.hypervisor.migration.destxml import rewrite_graphics_listen
from agent.hypervisor.migration.errors import diagnose
from agent.hypervisor.migration.monitor import handling_limit, timeout_for
from protocol.messages.migration import (
    MigrateAnswer,
    MigrateCommand,
    PrepareForMigrationAnswer,
    PrepareForMigrationCommand,
)
from tests.agent_env import agent_config, agent_dir, guid_of, running_agent, running_ms

GUID = guid_of("agent1")


def test_timeout_is_the_smaller_positive_limit() -> None:
    assert timeout_for(600, -1) == 600
    assert timeout_for(0, 30) == 30
    assert timeout_for(600, 30) == 30
    assert timeout_for(0, -1) is None


def test_without_a_command_wait_the_answer_waits_for_the_outcome() -> None:
    # The MS's plain migration sends no wait: vm.migrate.wait (its migratewait) aborts the
    # job, and the handling leaves time to read the outcome after it.
    assert handling_limit(120, 3) == 120
    assert handling_limit(0, 3) == 63
    assert handling_limit(0, -1) is None


def test_graphics_listen_points_at_the_destination() -> None:
    xml = (
        "<domain><devices><graphics type='vnc' port='-1' listen='10.0.0.1'>"
        "<listen type='address' address='10.0.0.1'/></graphics></devices></domain>"
    )
    out = rewrite_graphics_listen(xml, "10.0.0.2")
    assert "10.0.0.1" not in out and out.count("10.0.0.2") == 2


def test_diagnoses_name_the_file_and_host() -> None:
    d = diagnose(
        "authentication failed: Failed to verify peer's certificate",
        vm="v",
        source="this host",
        dest="10.0.0.2",
        uri="qemu+tls://10.0.0.2/system",
    )
    assert "10.0.0.2" in d.summary and "/etc/pki/libvirt/servercert.pem" in d.check
    d = diagnose(
        "unable to connect to server at '10.0.0.2:16514': Connection refused",
        vm="v",
        source="this host",
        dest="10.0.0.2",
        uri="qemu+tls://10.0.0.2/system",
    )
    assert (
        d.summary == "Migration was refused connection to destination: qemu+tls://10.0.0.2/system"
    )
    assert "16514" in d.check


async def test_failed_migration_leaves_the_vm_running_and_defined(tmp_path: Path) -> None:
    # The test driver refuses peer-to-peer migration: a real libvirt failure.
    async with running_ms(tmp_path, ping_interval=1) as ms:
        config = agent_config(tmp_path, f"127.0.0.1:{ms.port}", agent_dir(tmp_path, ms.ca))
        async with running_agent(config) as agent:
            await ms.wait_for_host(GUID, timeout=10)
            (answer,) = await ms.send_command(
                GUID, [MigrateCommand(vm_name="test", dest_ip="127.0.0.1", wait=30)]
            )
            assert isinstance(answer, MigrateAnswer) and not answer.result
            assert answer.details is not None
            assert "Migration of test to 127.0.0.1 failed" in answer.details
            assert "The VM is still running on this host" in answer.details
            running = await agent.hypervisor.running_domains()
            assert running.get("test") == "running"
            persistent = await agent.hypervisor.call(
                lambda c: c.lookupByName("test").isPersistent()
            )
            assert persistent

            (answer,) = await ms.send_command(
                GUID, [MigrateCommand(vm_name="no-such-vm", dest_ip="127.0.0.1")]
            )
            assert isinstance(answer, MigrateAnswer) and not answer.result
            assert "not running on this host (not defined)" in (answer.details or "")

            (prepared,) = await ms.send_command(
                GUID, [PrepareForMigrationCommand(vm={"name": "incoming-vm"})]
            )
            # As the Java agent's: no DPDK ports; no shares without a speed to compute from.
            assert prepared == PrepareForMigrationAnswer(result=True, dpdk_interface_mapping={})

            # newVmCpuShares computed here, by this host's cgroup version.
            to = {"name": "incoming-vm", "cpus": 2, "minSpeed": 500, "speed": 1000}
            (prepared,) = await ms.send_command(GUID, [PrepareForMigrationCommand(vm=to)])
            assert isinstance(prepared, PrepareForMigrationAnswer) and prepared.result
            facts = agent.hypervisor.last_facts
            assert facts is not None
            if Path("/sys/fs/cgroup/cgroup.controllers").is_file():  # v2: scaled to 10000
                expected = -(-2 * 500 * 10000 // (facts.cpus * facts.speed_mhz))
                expected = min(max(expected, 2), 10000)
            else:
                expected = 2 * 500
            assert prepared.new_vm_cpu_shares == expected

            # A NIC whose bridge this host lacks: refused, naming it (nothing plugged).
            nic = {
                "deviceId": 0,
                "type": "Guest",
                "mac": "02:00:00:00:00:01",
                "broadcastType": "Native",
                "name": "nosuchbr0",
            }
            (prepared,) = await ms.send_command(
                GUID, [PrepareForMigrationCommand(vm={**to, "nics": [nic]})]
            )
            assert isinstance(prepared, PrepareForMigrationAnswer) and not prepared.result
            assert "cannot receive incoming-vm" in (prepared.details or "")
            assert "nosuchbr0" in (prepared.details or "")


async def test_outgoing_migrations_beyond_the_limit_are_refused(tmp_path: Path) -> None:
    from agent.config import AgentConfig
    from agent.hypervisor.connection import Hypervisor
    from agent.hypervisor.migration.engine import Migrations

    config = AgentConfig.from_properties(
        {"guid": "g", "state.dir": str(tmp_path), "migration.max.outgoing": "1"}
    )
    migrations = Migrations(config, Hypervisor("test:///default"))
    migrations.outgoing = 1  # one migration already running
    answer = await migrations.migrate(
        MigrateCommand(vm_name="test", dest_ip="10.0.0.2"), secured=False
    )
    assert not answer.result
    assert answer.details == (
        "refusing to migrate test: 1 outgoing migrations already running "
        "(migration.max.outgoing=1); retry later"
    )
    answer = await migrations.migrate(
        MigrateCommand(vm_name="test", dest_ip="10.0.0.2", dest_secured=False), secured=True
    )
    assert not answer.result and "would cross the network in clear" in (answer.details or "")
