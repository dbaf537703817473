"""The storage and HA commands through a real session (the lab MS, TLS on loopback, an agent
on libvirt's test driver), each answer judged by the lab's MS-side readers
(lab.ms_side.verdict_for) as a 4.21 management server would judge it.

The same on real libvirtds, a shared pool and real VMs: tests/test_lab_pools.py.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from agent.daemon.app import Agent
from agent.ha.beat import write_heartbeat
from agent.hypervisor import hostinfo
from lab.mgmt import ManagementServer
from lab.ms_side import HostEffect, connect, verdict_for
from protocol.messages.enums import StoragePoolType, StorageResourceType
from protocol.messages.ha import CheckOnHostAnswer, CheckOnHostCommand, FenceAnswer, FenceCommand
from protocol.messages.host import StartupRoutingCommand
from protocol.messages.storage import (
    DeleteStoragePoolCommand,
    GetStorageStatsAnswer,
    GetStorageStatsCommand,
    ModifyStoragePoolAnswer,
    ModifyStoragePoolCommand,
    StartupStorageCommand,
)
from protocol.messages.to import HostTO, NetworkTO, StorageFilerTO
from protocol.model import Answer, Command, Message, UnsupportedAnswer
from tests.agent_env import agent_config, agent_dir, guid_of, running_agent, running_ms

GUID = guid_of("agent1")
NEIGHBOUR = "10.77.0.2"


class Cloud:
    def __init__(self, ms: ManagementServer, agent: Agent) -> None:
        self.ms, self.agent = ms, agent

    async def send(self, command: Command) -> Message:
        (answer,) = await self.ms.send_command(GUID, [command], timeout=30)
        return answer


@pytest.fixture
async def cloud(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Cloud]:
    keys: dict[str, str] = getattr(request, "param", {})
    async with running_ms(tmp_path, ping_interval=60) as ms:
        config = agent_config(
            tmp_path,
            f"127.0.0.1:{ms.port}",
            agent_dir(tmp_path, ms.ca),
            **{
                "ha.heartbeat.sharedmountpoint": "true",
                "ha.heartbeat.interval": "0.2",
                "ha.heartbeat.timeout": "30",
                **keys,
            },
        )
        async with running_agent(config) as agent:
            await ms.wait_for_host(GUID, timeout=10)
            cloud = Cloud(ms, agent)
            yield cloud
            for pool in list(agent.pools.attached):
                await agent.pools.remove(pool)


def smp_pool(path: Path, pool_uuid: str | None = None) -> StorageFilerTO:
    return StorageFilerTO(
        id=7,
        uuid=pool_uuid or str(uuid.uuid4()),
        host="localhost",
        path=str(path),
        port=0,
        type=StoragePoolType.SHARED_MOUNT_POINT,
    )


def attach(pool: StorageFilerTO) -> ModifyStoragePoolCommand:
    # The MS's localPath: "/mnt/" + "/" + a v3 uuid of host and path, stored as it comes back.
    return ModifyStoragePoolCommand(add=True, pool=pool, local_path="/mnt//3f1b0c2d-ms-name")


def my_ip(agent: Agent) -> str:
    found = hostinfo.private_interface(agent.config.private_network_device)
    assert found is not None
    return found.ip


async def test_a_shared_pool_is_attached_with_the_answer_the_ms_reads(
    cloud: Cloud, tmp_path: Path
) -> None:
    shared = tmp_path / "primary"
    shared.mkdir()
    pool = smp_pool(shared)
    command = attach(pool)
    answer = await cloud.send(command)
    verdict = verdict_for(command, answer)
    assert verdict.ok, verdict.reason
    assert isinstance(answer, ModifyStoragePoolAnswer)
    info = answer.pool_info
    assert info is not None
    # What ModifyStoragePoolAnswer's Java constructor builds from the command and the pool.
    assert (info.uuid, info.host, info.host_path) == (None, "localhost", str(shared))
    assert info.local_path == "/mnt//3f1b0c2d-ms-name"
    assert info.pool_type == StoragePoolType.SHARED_MOUNT_POINT
    stats = await cloud.agent.pools.info(pool.uuid or "")
    assert stats is not None and info.capacity_bytes == stats.capacity > 0
    assert info.available_bytes == stats.available
    assert answer.template_info == {}
    assert verdict.read["localPath"] == "/mnt/3f1b0c2d-ms-name"
    assert verdict.read["usedBytes"] == stats.capacity - stats.available
    # What main answered before this issue (Unsupported), a plain true Answer and a
    # default-valued ModifyStoragePoolAnswer would each have sent the host to Alert.
    for wrong in (
        UnsupportedAnswer.for_command(command.java_class),
        Answer(result=True),
        ModifyStoragePoolAnswer(result=True),
    ):
        assert verdict_for(command, wrong).host_effect is HostEffect.ALERT
    # The pool is libvirt's, and this host's heartbeat is on it.
    hb = shared / "KVMHA" / f"hb-{my_ip(cloud.agent)}"
    with trio.fail_after(5):
        while not hb.exists():
            await trio.sleep(0.05)
    # Attached again (the MS does at every connect): the same answer.
    again = await cloud.send(command)
    assert verdict_for(command, again).ok and isinstance(again, ModifyStoragePoolAnswer)
    # Stats, then detach (ModifyStoragePool add=false, then DeleteStoragePool: both work).
    stats_cmd = GetStorageStatsCommand(
        id=pool.uuid, pool_type=StoragePoolType.SHARED_MOUNT_POINT, local_path=str(shared)
    )
    got = await cloud.send(stats_cmd)
    stats_verdict = verdict_for(stats_cmd, got)
    assert stats_verdict.ok, stats_verdict.reason
    assert isinstance(got, GetStorageStatsAnswer)
    assert got.capacity_bytes == stats.capacity and got.used_bytes == stats.allocation
    detach = ModifyStoragePoolCommand(add=False, pool=pool, local_path=command.local_path)
    detached = await cloud.send(detach)
    assert isinstance(detached, ModifyStoragePoolAnswer) and detached.result
    assert await cloud.agent.pools.info(pool.uuid or "") is None
    assert cloud.agent.heartbeat.beats == {}
    gone = await cloud.send(stats_cmd)
    assert isinstance(gone, GetStorageStatsAnswer) and not gone.result
    assert "no storage pool to get statistics from" in (gone.details or "")
    assert not verdict_for(stats_cmd, gone).ok  # non-fatal: skipped this cycle
    await cloud.send(command)
    delete = DeleteStoragePoolCommand(pool=pool, local_path=command.local_path)
    deleted = await cloud.send(delete)
    assert verdict_for(delete, deleted).ok
    assert await cloud.agent.pools.info(pool.uuid or "") is None


async def test_a_pool_that_cannot_be_attached_says_why_and_the_ms_alerts(
    cloud: Cloud, tmp_path: Path
) -> None:
    missing = attach(smp_pool(tmp_path / "not-mounted-here"))
    answer = await cloud.send(missing)
    assert type(answer) is Answer and not answer.result
    assert f"{tmp_path}/not-mounted-here is not a directory on this host" in (answer.details or "")
    assert verdict_for(missing, answer).host_effect is HostEffect.ALERT
    rbd = attach(
        StorageFilerTO(uuid=str(uuid.uuid4()), host="ceph", path="rbd", type=StoragePoolType.RBD)
    )
    refused = await cloud.send(rbd)
    assert not getattr(refused, "result", True)
    assert "pool type RBD is not supported by this agent" in (refused.details or "")  # type: ignore[attr-defined]
    bad = attach(smp_pool(tmp_path, pool_uuid="../../etc"))
    assert "invalid pool uuid" in ((await cloud.send(bad)).details or "")  # type: ignore[attr-defined]
    assert cloud.agent.pools.attached == {}


def host_to(ip: str) -> HostTO:
    return HostTO(guid="neighbour-LibvirtComputingResource", private_network=NetworkTO(ip=ip))


async def test_check_on_host_and_fence_read_the_neighbours_heartbeat(
    cloud: Cloud, tmp_path: Path
) -> None:
    check = CheckOnHostCommand(host=host_to(NEIGHBOUR))
    fence = FenceCommand(
        vm_name="i-2-9-VM", host_guid="n-1", host_ip=NEIGHBOUR, host=host_to(NEIGHBOUR)
    )
    # No heartbeat pool yet: this host cannot tell (the MS reads Up, and fencing fails).
    unknown = await cloud.send(check)
    assert isinstance(unknown, CheckOnHostAnswer) and not unknown.result
    assert not unknown.determined and "cannot tell" in (unknown.details or "")
    assert verdict_for(check, unknown).read["status"] == "Up"
    not_fenced = await cloud.send(fence)
    assert isinstance(not_fenced, FenceAnswer) and not not_fenced.result
    assert "No way to safely fence i-2-9-VM on host n-1" in (not_fenced.details or "")
    shared = tmp_path / "primary"
    shared.mkdir()
    assert verdict_for(attach(smp_pool(shared)), await cloud.send(attach(smp_pool(shared)))).ok
    # A fresh heartbeat: Up, and not fenced.
    write_heartbeat(str(shared), NEIGHBOUR, int(time.time()), must_be_mounted=False)
    up = await cloud.send(check)
    assert isinstance(up, CheckOnHostAnswer) and not up.result
    assert up.determined and up.alive and (up.details or "").startswith("Heart is beating...")
    assert verdict_for(check, up).read["status"] == "Up"
    beating = await cloud.send(fence)
    assert isinstance(beating, FenceAnswer) and not beating.result
    assert (beating.details or "").startswith("Heart is still beating...")
    assert not verdict_for(fence, beating).ok
    # A stale one (older than ha.heartbeat.timeout, 30 s here): Down, and fenced off.
    write_heartbeat(str(shared), NEIGHBOUR, int(time.time()) - 45, must_be_mounted=False)
    down = await cloud.send(check)
    assert isinstance(down, CheckOnHostAnswer) and down.result
    assert down.determined and not down.alive
    assert "last written 45 s ago (more than 30 s)" in (down.details or "")
    assert verdict_for(check, down).read["status"] == "Down"
    fenced = await cloud.send(fence)
    assert isinstance(fenced, FenceAnswer) and fenced.result
    assert verdict_for(fence, fenced).ok
    # An Unsupported answer (what main gave) reads Up: no host would ever be declared Down.
    assert verdict_for(check, UnsupportedAnswer.for_command(check.java_class)).read == {
        "status": "Up"
    }
    assert verdict_for(fence, Answer(result=True)).ok is False  # not a FenceAnswer: throws


LOCAL_UUID = "0c5f7e2a-8d31-4b6e-a9f0-1e2d3c4b5a69"


def _startup_of(ms: ManagementServer) -> list[Any]:
    for _label, request in ms.received:
        if isinstance(request.commands[0], StartupRoutingCommand):
            return list(request.commands)
    raise AssertionError("no startup request")


async def test_local_storage_is_sent_in_the_startup_request(tmp_path: Path) -> None:
    local = tmp_path / "local-images"
    local.mkdir()
    async with running_ms(tmp_path, ping_interval=60) as ms:
        config = agent_config(
            tmp_path,
            f"127.0.0.1:{ms.port}",
            agent_dir(tmp_path, ms.ca),
            **{"local.storage.uuid": LOCAL_UUID, "local.storage.path": f"{local}/"},
        )
        async with running_agent(config) as agent:
            await ms.wait_for_host(GUID, timeout=10)
            routing, storage_cmd = _startup_of(ms)
            assert isinstance(routing, StartupRoutingCommand)
            assert isinstance(storage_cmd, StartupStorageCommand)
            verdict = connect.startup_storage(storage_cmd)
            assert verdict.ok, verdict.reason
            info = storage_cmd.pool_info
            assert info is not None
            assert (info.uuid, info.host_path, info.local_path) == (
                LOCAL_UUID,
                str(local),
                str(local),
            )
            assert info.host == routing.private_ip_address
            assert info.pool_type == StoragePoolType.FILESYSTEM
            stats = await agent.pools.info(LOCAL_UUID)
            assert stats is not None and info.capacity_bytes == stats.capacity
            assert storage_cmd.resource_type == StorageResourceType.STORAGE_POOL
            assert storage_cmd.type.value == "Storage"
            # Agent.setupStartupCommand gives every startup command the host's identity.
            for field in ("guid", "data_center", "pod", "name", "version", "resource_name"):
                assert getattr(storage_cmd, field) == getattr(routing, field), field
            assert LOCAL_UUID not in agent.heartbeat.beats  # no heartbeat on local pools
            await agent.pools.remove(LOCAL_UUID)
