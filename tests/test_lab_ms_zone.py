"""The lab MS plays a 4.21 management server's connect: the sequence, its waits, the host
states and the MS's verdicts, driven by a scripted agent over real TCP and TLS."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from agent.handlers import HandlerRegistry
from lab.ms import ALERT, DISCONNECTED, UP, ManagementServer, PhysicalNetwork, SharedPool, Zone
from lab.ms.status import Event, Status, after_investigation
from lab.ms.zone import name_uuid_from_bytes
from protocol import Message
from protocol.messages.enums import StoragePoolType
from protocol.messages.host import (
    CheckHealthCommand,
    HostVmStateReportEntry,
    PowerState,
    ReadyCommand,
)
from protocol.messages.network import (
    CheckNetworkAnswer,
    CheckNetworkCommand,
    CleanupNetworkRulesCmd,
    ModifySshKeysCommand,
    SetHostParamsCommand,
)
from protocol.messages.stats import (
    GetHostStatsAnswer,
    GetHostStatsCommand,
    GetVmStatsAnswer,
    GetVmStatsCommand,
    GetVolumeStatsAnswer,
    GetVolumeStatsCommand,
    HostStatsEntry,
    VmStatsEntry,
    VolumeStatsEntry,
)
from protocol.messages.storage import (
    GetStorageStatsAnswer,
    GetStorageStatsCommand,
    ModifyStoragePoolAnswer,
    ModifyStoragePoolCommand,
)
from protocol.model import Answer, Command, UnsupportedAnswer
from tests.agent_env import agent_config, agent_dir, guid_of, running_agent, running_ms
from tests.ms_env import GOOD, Reply, ScriptedAgent, client_context, serving

GUID = "0f6d4bd4-5b0b-4c7a-9d1e-6c1b9a7f0001-LibvirtComputingResource"
GUID2 = "0f6d4bd4-5b0b-4c7a-9d1e-6c1b9a7f0002-LibvirtComputingResource"
POOL = SharedPool(uuid="7c2b3d0e-1111-3aaa-8bbb-000000000001", path="/mnt/kvmlab-primary")
ZONE = Zone(
    physical_networks=(
        PhysicalNetwork(management="cloudbr0", public="cloudbr0", guest="cloudbr0"),
    ),
    shared_pools=(POOL,),
)
ASYNC = (CleanupNetworkRulesCmd, SetHostParamsCommand, ModifySshKeysCommand)


@pytest.fixture
async def ms(tmp_path: Path) -> AsyncIterator[ManagementServer]:
    server = ManagementServer.create(state_dir=tmp_path / "ms", ping_interval=60, zone=ZONE)
    async with serving(server):
        yield server


def names(agent: ScriptedAgent) -> list[str]:
    return [c.java_class.rsplit(".", 1)[-1] for c in agent.commands()]


def test_java_name_uuid() -> None:
    # UUID.nameUUIDFromBytes(new byte[0]): the MD5 of nothing, as version 3.
    assert name_uuid_from_bytes(b"") == "d41d8cd9-8f00-3204-a980-0998ecf8427e"
    assert POOL.local_path == "/mnt//" + name_uuid_from_bytes(b"localhost/mnt/kvmlab-primary")


async def test_the_sequence_in_order_with_the_real_waits(
    ms: ManagementServer, tmp_path: Path, nursery: trio.Nursery
) -> None:
    # The async commands' answers are held back for a second: the MS must not wait.
    delays: dict[type[Message], float] = {c: 1.0 for c in ASYNC}
    agent = await ScriptedAgent.connect(nursery, ms, client_context(ms.ca, tmp_path), delays=delays)
    await agent.startup(GUID)
    record = await ms.wait_for_host(GUID, timeout=10)
    await agent.wait_for(ReadyCommand, count=2)
    assert names(agent) == [
        "CleanupNetworkRulesCmd",
        "ModifyStoragePoolCommand",
        "CheckNetworkCommand",
        "SetHostParamsCommand",
        "ModifySshKeysCommand",
        "ReadyCommand",
        "ReadyCommand",
    ]
    cleanup, pool, check, params, keys, ready, second = agent.commands()
    assert isinstance(cleanup, CleanupNetworkRulesCmd) and 1800 <= cleanup.interval < 2700
    assert isinstance(pool, ModifyStoragePoolCommand) and pool.pool is not None
    assert (pool.wait, pool.add, pool.local_path) == (300, True, POOL.local_path)
    assert (pool.pool.uuid, pool.pool.path, pool.pool.host, pool.pool.type) == (
        POOL.uuid,
        "/mnt/kvmlab-primary",
        "localhost",
        StoragePoolType.SHARED_MOUNT_POINT,
    )
    assert isinstance(check, CheckNetworkCommand) and check.wait == 120
    (info,) = check.network_info_list or []
    labels = (info.private_network_name, info.guest_network_name, info.public_network_name)
    assert labels == ("cloudbr0",) * 3 and info.storage_network_name is None
    assert isinstance(params, SetHostParamsCommand) and params.params is not None
    assert params.params["migratewait"] == "3600"
    assert isinstance(keys, ModifySshKeysCommand) and keys.pub_key and keys.prv_key
    assert keys.pub_key.startswith("ssh-rsa ") and "PRIVATE KEY" in keys.prv_key
    key_file = tmp_path / "ms" / "ssh" / "id_rsa"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert isinstance(ready, ReadyCommand) and isinstance(second, ReadyCommand)
    assert (ready.wait, ready.host_id, ready.details) == (60, record.id, None)
    assert second.wait == 0 and second.avoid_ms_host_list == []
    assert all(c.wait == 0 for c in agent.commands() if isinstance(c, ASYNC))

    # Up before the first async answer left the agent: nothing waited for them.
    (connect,) = ms.connects
    assert connect.outcome == UP and connect.up_at is not None
    with trio.fail_after(5):
        while sum(isinstance(r.commands[0], ASYNC) for _, r in agent.answered) < 3:
            await trio.sleep(0.05)
    first_async_answer = min(t for t, r in agent.answered if isinstance(r.commands[0], ASYNC))
    assert connect.up_at < first_async_answer
    # The pool as DefaultHostListener stores it: localPath with "//" made "/", used bytes.
    ref = ms.pool_refs[POOL.uuid][GUID]
    assert ref.local_path == POOL.local_path.replace("//", "/")
    assert (ref.capacity_bytes, ref.used_bytes) == (1 << 30, (1 << 30) - (400 << 20))
    # The async answers are recorded once they come; the MS read none of them.
    with trio.fail_after(5):
        while any(s.verdict is None for s in connect.steps):
            await trio.sleep(0.05)
    assert all(s.verdict is not None and s.verdict.ok for s in connect.steps)
    assert (await agent.ping(record.id)).send_startup is False


@pytest.mark.parametrize(
    ("command", "reply", "why"),
    [
        (CheckNetworkCommand, lambda c: Answer(result=True), "ClassCastException"),
        (CheckNetworkCommand, lambda c: UnsupportedAnswer(result=False), "ClassCastException"),
        (CheckNetworkCommand, lambda c: CheckNetworkAnswer(result=False, details="no br"), "no br"),
        (ModifyStoragePoolCommand, lambda c: ModifyStoragePoolAnswer(), "NullPointerException"),
        (ModifyStoragePoolCommand, lambda c: Answer(result=True), "ClassCastException"),
        (ReadyCommand, lambda c: Answer(result=False), "AgentDisconnected"),
    ],
)
async def test_a_wrong_class_or_default_answer_sends_the_host_to_alert(
    ms: ManagementServer,
    tmp_path: Path,
    nursery: trio.Nursery,
    command: type[Command],
    reply: Reply,
    why: str,
) -> None:
    replies: dict[type[Message], Reply] = {**GOOD, command: reply}
    agent = await ScriptedAgent.connect(nursery, ms, client_context(ms.ca, tmp_path), replies)
    await agent.startup(GUID)
    record = await ms.wait_for_status(GUID, ALERT, timeout=10)
    # The MS removed the agent: it closed the connection; nothing after the failing
    # listener was sent (no ReadyCommand: the refusal cannot go out on a closed link).
    with trio.fail_after(5):
        await agent.closed.wait()
    sent = names(agent)
    assert sent[-1] == command.JAVA_CLASS.rsplit(".", 1)[-1], sent
    assert sent.count("ReadyCommand") == (1 if sent[-1] == "ReadyCommand" else 0)
    (connect,) = ms.connects
    assert connect.outcome == ALERT and connect.reason is not None and why in connect.reason
    assert record.status == ALERT and GUID not in ms.connected()
    assert ms.db.get(GUID) is not None


async def test_reconnect_true_in_check_network_disconnects(
    ms: ManagementServer, tmp_path: Path, nursery: trio.Nursery
) -> None:
    replies = {**GOOD, CheckNetworkCommand: lambda c: CheckNetworkAnswer(reconnect=True)}
    agent = await ScriptedAgent.connect(nursery, ms, client_context(ms.ca, tmp_path), replies)
    await agent.startup(GUID)
    await ms.wait_for_status(GUID, DISCONNECTED, timeout=10)
    with trio.fail_after(5):
        await agent.closed.wait()
    assert "ReadyCommand" not in names(agent)


async def test_a_host_of_another_os_is_refused_with_a_ready_command(
    ms: ManagementServer, tmp_path: Path, nursery: trio.Nursery
) -> None:
    ctx = client_context(ms.ca, tmp_path)
    first = await ScriptedAgent.connect(nursery, ms, ctx)
    await first.startup(GUID)
    await ms.wait_for_host(GUID, timeout=10)
    other = await ScriptedAgent.connect(nursery, ms, ctx)
    await other.startup(GUID2, host_os="Ubuntu", ip="192.0.2.20")
    refusal = await other.wait_for(ReadyCommand)
    assert isinstance(refusal, ReadyCommand) and refusal.details is not None
    assert "IllegalArgumentException: Can't add host: 192.0.2.20" in refusal.details
    assert '"Debian" hosts' in refusal.details
    assert names(other) == ["ReadyCommand"]  # before any listener
    assert not other.closed.is_set()  # the link stays open: the agent leaves by itself
    record = ms.db.get(GUID2)
    assert record is not None and record.status != UP


async def test_a_silent_host_is_investigated_then_put_in_alert(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    server = ManagementServer.create(state_dir=tmp_path / "ms", ping_interval=1)
    server.global_wait = 2  # the CheckHealthCommand's time-out (1800 s in a real MS)
    async with serving(server) as ms:
        agent = await ScriptedAgent.connect(nursery, ms, client_context(ms.ca, tmp_path))
        await agent.startup(GUID)
        record = await ms.wait_for_host(GUID, timeout=10)
        # Pings keep it Up, well past 2.5 ping intervals.
        for _ in range(5):
            await agent.ping(record.id)
            await trio.sleep(0.8)
        assert ms.liveness.investigations == []
        # No pings, but it answers CheckHealthCommand: determined Up, it stays Up.
        with trio.fail_after(10):
            while not ms.liveness.investigations:
                await trio.sleep(0.1)
        assert ms.liveness.investigations[0][2] is Status.UP
        assert ms.db.get(GUID).status == UP  # type: ignore[union-attr]
        # Silent altogether (CheckHealth unanswered within the MS's wait): nobody can tell
        # (no HA storage) and alert.wait is 0: Alert, and the MS drops the connection.
        agent.delays[CheckHealthCommand] = 60
        await ms.wait_for_status(GUID, ALERT, timeout=15)
        with trio.fail_after(5):
            await agent.closed.wait()
        assert ms.liveness.investigations[-1][2] is None


def test_after_investigation_follows_handle_disconnect_with_investigation() -> None:
    up, ping_timeout = Status.UP, Event.PING_TIMEOUT
    check = after_investigation
    assert check(up, ping_timeout, Status.UP, since_last_ping=9, alert_wait=0) is Event.PING
    assert check(up, ping_timeout, Status.DOWN, since_last_ping=9, alert_wait=0) is Event.HOST_DOWN
    disconnected = Status.DISCONNECTED
    assert check(up, ping_timeout, disconnected, since_last_ping=9, alert_wait=0) is (
        Event.AGENT_DISCONNECTED
    )
    # Undetermined: nothing until alert.wait has passed since the last ping, then Alert.
    assert check(up, ping_timeout, None, since_last_ping=9, alert_wait=1800) is None
    assert check(up, ping_timeout, None, since_last_ping=1801, alert_wait=1800) is ping_timeout
    # A disconnection that does not lead to Alert is not investigated.
    shutdown = Event.SHUTDOWN_REQUESTED
    assert check(up, shutdown, None, since_last_ping=0, alert_wait=0) is shutdown


def _stats_replies() -> dict[type[Message], Reply]:
    def vms(c: Command) -> Message:
        assert isinstance(c, GetVmStatsCommand)
        entry = VmStatsEntry(num_cpus=1, memory_kbs=131072, entity_type="vm")
        return GetVmStatsAnswer(vm_stats_map={n: entry for n in c.vm_names or []})

    def volumes(c: Command) -> Message:
        assert isinstance(c, GetVolumeStatsCommand)
        sizes = {
            p: VolumeStatsEntry(volume_uuid=p, physical_size=4096, virtual_size=1 << 20)
            for p in c.volume_uuids or []
        }
        return GetVolumeStatsAnswer(
            pool_uuid=c.pool_uuid, pool_type=c.pool_type, volume_stats=sizes
        )

    host = HostStatsEntry(entity_type="host", total_memory_kbs=2048.0, free_memory_kbs=1024.0)
    pool = GetStorageStatsAnswer(capacity_bytes=1 << 30, used_bytes=1 << 29)
    return {
        **GOOD,
        GetHostStatsCommand: lambda c: GetHostStatsAnswer(host_stats=host),
        GetVmStatsCommand: vms,
        GetVolumeStatsCommand: volumes,
        GetStorageStatsCommand: lambda c: pool,
    }


async def test_the_statistics_cycle_asks_up_hosts_and_nothing_is_fatal(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    zone = ZONE.evolve(stats_interval=0.2)
    server = ManagementServer.create(state_dir=tmp_path / "ms", ping_interval=60, zone=zone)
    async with serving(server) as ms:
        ctx = client_context(ms.ca, tmp_path)
        good = await ScriptedAgent.connect(nursery, ms, ctx, _stats_replies())
        await good.startup(GUID)
        record = await ms.wait_for_host(GUID, timeout=10)
        # Today's agent: UnsupportedAnswer to every statistics command.
        unsupported: dict[type[Message], Reply] = dict(GOOD)
        kinds = (GetHostStatsCommand, GetVmStatsCommand, GetVolumeStatsCommand)
        for kind in (*kinds, GetStorageStatsCommand):
            unsupported[kind] = lambda c: UnsupportedAnswer(result=False)
        other = await ScriptedAgent.connect(nursery, ms, ctx, unsupported)
        await other.startup(GUID2, ip="192.0.2.20")
        record2 = await ms.wait_for_host(GUID2, timeout=10)
        on = HostVmStateReportEntry(state=PowerState.POWER_ON, host=GUID)
        await good.ping(record.id, {"i-2-10-VM": on})
        await other.ping(record2.id, {"i-3-11-VM": on})
        ms.track_volume(POOL.uuid, "vol-1", "i-2-10-VM")
        ms.track_volume(POOL.uuid, "vol-2", "i-3-11-VM")
        ms.track_volume(POOL.uuid, "vol-3", "i-4-12-VM")  # a VM no host reports: no one asked
        with trio.fail_after(15):
            while not (ms.stats.vm_stats and ms.stats.volume_stats and ms.stats.pool_stats):
                await trio.sleep(0.1)
        stats = ms.stats
        assert stats.host_stats[GUID]["totalMemoryKBs"] == 2048.0 and GUID2 not in stats.host_stats
        assert stats.vm_stats["i-2-10-VM"]["memoryKBs"] == 131072
        assert set(stats.volume_stats) == {"vol-1"}
        assert stats.pool_stats[POOL.uuid] == {"capacityBytes": 1 << 30, "usedBytes": 1 << 29}
        vm_cmd = await good.wait_for(GetVmStatsCommand)
        assert isinstance(vm_cmd, GetVmStatsCommand)
        assert (vm_cmd.vm_names, vm_cmd.host_guid) == (["i-2-10-VM"], GUID)
        vol_cmd = await good.wait_for(GetVolumeStatsCommand)
        assert isinstance(vol_cmd, GetVolumeStatsCommand)
        assert (vol_cmd.volume_uuids, vol_cmd.pool_uuid, vol_cmd.wait) == (["vol-1"], POOL.uuid, 60)
        assert vol_cmd.pool_type is StoragePoolType.SHARED_MOUNT_POINT
        host_cmd = await good.wait_for(GetHostStatsCommand)
        assert isinstance(host_cmd, GetHostStatsCommand)
        assert (host_cmd.host_guid, host_cmd.host_id) == (GUID, record.id)
        storage = [
            c for c in good.commands() + other.commands() if isinstance(c, GetStorageStatsCommand)
        ]
        assert storage and all(
            (c.id, c.pool_type, c.local_path) == (POOL.uuid, POOL.type, POOL.path) for c in storage
        )
        # Unsupported answers are skipped, as StatsCollector does; both hosts stay Up.
        failed = {s.command for s in stats.samples if not s.verdict.ok}
        assert {"GetHostStatsCommand", "GetVmStatsCommand", "GetVolumeStatsCommand"} <= failed
        assert all(s.guid == GUID2 for s in stats.samples if not s.verdict.ok)
        assert {r.status for r in ms.db.all()} == {UP}
        assert ms.connected() == [GUID, GUID2]


@pytest.mark.parametrize(
    ("labels", "up"),
    [(PhysicalNetwork(), True), (PhysicalNetwork(guest="cloudbr9", management="lo"), False)],
)
async def test_a_real_agent_reaches_up_or_alert_as_its_bridges_say(
    tmp_path: Path, labels: PhysicalNetwork, up: bool
) -> None:
    """The agent as it is (libvirt's test driver): the whole sequence with no pool. A traffic
    label naming no bridge of this machine makes its CheckNetworkAnswer false: Alert."""
    async with running_ms(tmp_path, ping_interval=1, zone=Zone(physical_networks=(labels,))) as ms:
        overrides = {"ssh.keys.dir": str(tmp_path / "ssh")}
        config = agent_config(
            tmp_path, f"127.0.0.1:{ms.port}", agent_dir(tmp_path, ms.ca), **overrides
        )
        async with running_agent(config):
            if up:
                await ms.wait_for_host(guid_of("agent1"), timeout=20)
                with trio.fail_after(10):  # the second ReadyCommand's answer, the async ones
                    while any(s.verdict is None for s in ms.connects[0].steps):
                        await trio.sleep(0.05)
            else:
                await ms.wait_for_status(guid_of("agent1"), ALERT, timeout=20)
    first = ms.connects[0]
    steps = [s.command for s in first.steps]
    if up:
        assert first.outcome == UP
        assert steps == [
            "CleanupNetworkRulesCmd",
            "CheckNetworkCommand",
            "SetHostParamsCommand",
            "ModifySshKeysCommand",
            "ReadyCommand",
            "ReadyCommand",
        ]
        assert all(s.verdict is not None and s.verdict.ok for s in first.steps)
        assert stat.S_IMODE((tmp_path / "ssh" / "id_rsa.cloud").stat().st_mode) == 0o600
    else:
        assert first.outcome == ALERT and steps[-1] == "CheckNetworkCommand"
        assert first.reason is not None and "cloudbr9" in first.reason


@pytest.mark.parametrize("answer", ["plain Answer", "CheckNetworkAnswer"])
async def test_a_real_agent_with_its_check_network_handler_replaced(
    tmp_path: Path, answer: str
) -> None:
    """The agent process's own session and dispatcher (libvirt's test driver), with the
    CheckNetworkCommand handler replaced: a plain Answer sends the host to Alert at every
    connect (the agent comes back and is put out again); the right class lets it reach Up,
    whatever the asynchronous commands are answered with (the MS does not read them)."""

    async def check_network(cmd: CheckNetworkCommand, ctx: object) -> Message:
        if answer == "plain Answer":
            return Answer(result=True)
        return CheckNetworkAnswer(result=True)

    handlers = HandlerRegistry.with_builtins()
    handlers.register(CheckNetworkCommand, check_network)
    async with running_ms(tmp_path, ping_interval=1, zone=Zone()) as ms:
        # ModifySshKeysCommand's keys go to the test's directory, not the machine's /root.
        overrides = {"ssh.keys.dir": str(tmp_path / "ssh")}
        config = agent_config(
            tmp_path, f"127.0.0.1:{ms.port}", agent_dir(tmp_path, ms.ca), **overrides
        )
        async with running_agent(config, handlers):
            if answer == "CheckNetworkAnswer":
                await ms.wait_for_host(guid_of("agent1"), timeout=20)
                (connect,) = ms.connects
                assert connect.outcome == UP
                return
            with trio.fail_after(30):
                while len([c for c in ms.connects if c.outcome == ALERT]) < 2:
                    await trio.sleep(0.1)
    first = ms.connects[0]
    assert first.reason is not None and "ClassCastException" in first.reason
    assert [s.command for s in first.steps] == ["CleanupNetworkRulesCmd", "CheckNetworkCommand"]
