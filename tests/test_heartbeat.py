"""The HA heartbeat: the file as kvmheartbeat.sh reads it (pure), its writing on real
directories, fencing when it cannot be written (domains on libvirt's test driver), and the
neighbours' read. Short real intervals (tenths of a second), no long sleeps. The same on the
two-host lab, with real VMs: tests/test_lab_pools.py."""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from agent.config import AgentConfig, ConfigError
from agent.ha.beat import (
    HeartbeatError,
    Liveness,
    heartbeat_path,
    judge,
    read_heartbeat,
    write_heartbeat,
)
from agent.ha.fence import reboot_host
from agent.ha.heartbeat import Heartbeat
from agent.hypervisor.connection import Hypervisor
from agent.hypervisor.pooldefs import PoolKind, dir_pool, nfs_pool
from agent.hypervisor.pools import Pools
from tests.agent_env import captured_logs

NOW = 1_750_000_000
ME, NEIGHBOUR = "10.1.0.5", "10.1.0.6"


# --- the file and its reading (pure) ---------------------------------------------------


@pytest.mark.parametrize(
    ("content", "liveness", "age"),
    [
        (f"{NOW - 5}\n", Liveness.ALIVE, 5),
        (f"{NOW - 60}\n", Liveness.ALIVE, 60),  # -gt: exactly the maximum is alive
        (f"{NOW - 61}\n", Liveness.DEAD, 61),
        (f"  {NOW - 3600}\n\n", Liveness.DEAD, 3600),  # $(cat): whitespace around is fine
        (f"{NOW - 256}\n", Liveness.ALIVE, 256),  # the return code keeps 8 bits: 256 -> 0
        (f"{NOW - 512}\n", Liveness.ALIVE, 512),
        (f"{NOW - 257}\n", Liveness.DEAD, 257),
        (f"{NOW + 30}\n", Liveness.ALIVE, -30),  # from the future (a fast clock)
        (None, Liveness.UNKNOWN, None),  # no file: expr fails, the script says ALIVE
        ("", Liveness.UNKNOWN, None),
        ("garbage\n", Liveness.UNKNOWN, None),
        (f"{NOW - 100} {NOW - 100}\n", Liveness.UNKNOWN, None),  # two words: expr fails
        (f"+{NOW - 100}\n", Liveness.UNKNOWN, None),  # not an integer to expr
    ],
)
def test_a_heartbeat_is_judged_as_kvmheartbeat_sh_judges_it(
    content: str | None, liveness: Liveness, age: int | None
) -> None:
    found = judge(content, NOW, 60)
    assert (found.liveness, found.age) == (liveness, age)
    assert found.liveness.beating == (liveness is not Liveness.DEAD)


def test_the_file_is_written_in_place_and_read_back(tmp_path: Path) -> None:
    path = write_heartbeat(str(tmp_path), ME, NOW, must_be_mounted=False)
    assert path == tmp_path / "KVMHA" / f"hb-{ME}" == heartbeat_path(str(tmp_path), ME)
    assert path.read_text() == f"{NOW}\n"
    inode = path.stat().st_ino
    write_heartbeat(str(tmp_path), ME, NOW + 10, must_be_mounted=False)
    assert path.read_text() == f"{NOW + 10}\n" and path.stat().st_ino == inode
    assert read_heartbeat(str(tmp_path), ME, must_be_mounted=False) == f"{NOW + 10}\n"
    assert read_heartbeat(str(tmp_path), NEIGHBOUR, must_be_mounted=False) is None


def test_what_cannot_be_written_or_named_is_an_error(tmp_path: Path) -> None:
    # An NFS pool must be mounted: a write on the directory underneath would be lost.
    with pytest.raises(HeartbeatError, match=f"{tmp_path} is not mounted"):
        write_heartbeat(str(tmp_path), ME, NOW, must_be_mounted=True)
    with pytest.raises(HeartbeatError, match="is not mounted"):
        read_heartbeat(str(tmp_path), ME, must_be_mounted=True)
    assert not (tmp_path / "KVMHA").exists()
    (tmp_path / "KVMHA").write_text("a file where the directory should be")
    with pytest.raises(HeartbeatError, match=f"cannot write {tmp_path}/KVMHA/hb-{ME}"):
        write_heartbeat(str(tmp_path), ME, NOW, must_be_mounted=False)
    for bad in ("../../etc/passwd", "", None, "10.0.0.1/x"):
        with pytest.raises(HeartbeatError, match="invalid host IP"):
            heartbeat_path(str(tmp_path), bad)  # type: ignore[arg-type]


def test_the_intervals_are_checked_against_each_other() -> None:
    base = {"guid": "g"}
    with pytest.raises(ConfigError, match="more often"):
        AgentConfig.from_properties({**base, "ha.heartbeat.interval": "60"})
    cfg = AgentConfig.from_properties(base)
    assert (cfg.ha_heartbeat_interval, cfg.ha_heartbeat_timeout) == (10, 60)
    assert not cfg.ha_heartbeat_shared_mount_point and not cfg.ha_fence_reboot


def test_reboot_host_syncs_then_writes_b_to_sysrq(tmp_path: Path) -> None:
    trigger = tmp_path / "sysrq-trigger"
    reboot_host(trigger, sync_wait=0)
    assert trigger.read_text() == "b"


# --- the service -----------------------------------------------------------------------


def config(**keys: str) -> AgentConfig:
    props = {
        "guid": "hb-test",
        "ha.heartbeat.sharedmountpoint": "true",
        "ha.heartbeat.interval": "0.1",
        "ha.heartbeat.timeout": "1",
        **keys,
    }
    return AgentConfig.from_properties(props)


def domain_xml(name: str, disk: Path) -> str:
    return (
        f"<domain type='test'><name>{name}</name><memory>65536</memory>"
        "<os><type>hvm</type></os><devices><disk type='file' device='disk'>"
        f"<source file='{disk}'/><target dev='vda'/></disk></devices></domain>"
    )


class Env:
    """A Heartbeat on libvirt's test driver, its wall clock running ``speed`` times as fast as
    trio's (100: file contents move on every write)."""

    def __init__(self, pools: Pools, cfg: AgentConfig, speed: float = 100, **kw: Any) -> None:
        self.pools = pools
        self.cfg = cfg
        self.speed = speed
        self.heartbeat = Heartbeat(pools, lambda: self.cfg, lambda: ME, wall=self.wall, **kw)
        pools.watchers.append(self.heartbeat)

    def wall(self) -> float:
        return NOW + self.speed * trio.current_time()

    async def vm(self, name: str, disk: Path) -> str:
        await self.pools.hypervisor.call(lambda c: c.createXML(domain_xml(name, disk), 0))
        return name

    async def running(self) -> dict[str, Any]:
        return await self.pools.hypervisor.running_domains()


@pytest.fixture
async def env_factory() -> AsyncIterator[Callable[..., Any]]:
    hv = Hypervisor("test:///default")
    async with trio.open_nursery() as nursery:
        await nursery.start(hv.run)
        made: list[Env] = []

        async def make(cfg: AgentConfig | None = None, **kw: Any) -> Env:
            env = Env(Pools(hv), cfg or config(), **kw)
            await nursery.start(env.heartbeat.run)
            made.append(env)
            return env

        yield make
        for env in made:
            for name in await env.running():
                if name.startswith("hbt-"):
                    await env.pools.destroy_domain(name)
            for pool in list(env.pools.attached):
                await env.pools.remove(pool)
        nursery.cancel_scope.cancel()


async def wait_for(check: Callable[[], bool], timeout: float = 5) -> None:
    with trio.fail_after(timeout):
        while not check():
            await trio.sleep(0.02)


async def test_the_heartbeat_is_refreshed_on_watched_pools_only(
    env_factory: Callable[..., Any], tmp_path: Path
) -> None:
    env = await env_factory()
    shared, local = tmp_path / "shared", tmp_path / "local"
    shared.mkdir()
    local.mkdir()
    smp = dir_pool(str(uuid.uuid4()), str(shared), PoolKind.SHARED_MOUNT_POINT)
    await env.pools.add(smp)
    await env.pools.add(dir_pool(str(uuid.uuid4()), str(local), PoolKind.LOCAL))
    hb = shared / "KVMHA" / f"hb-{ME}"

    def content() -> int:
        # Written in place, as the Java agent does: a read may fall between the truncation
        # and the write (kvmheartbeat.sh reads that as alive, and so does judge()).
        text = hb.read_text() if hb.exists() else ""
        return int(text) if text else 0

    await wait_for(lambda: content() > 0)
    first = content()
    await wait_for(lambda: content() > first + 20)  # 100x clock: 0.2 s = 20 "s"
    assert not (local / "KVMHA").exists()  # local pools carry no heartbeat
    assert set(env.heartbeat.beats) == {smp.uuid}
    # Without ha.heartbeat.sharedmountpoint, a SharedMountPoint pool is not watched.
    other = tmp_path / "other"
    other.mkdir()
    env.cfg = config(**{"ha.heartbeat.sharedmountpoint": "false"})
    await env.pools.add(dir_pool(str(uuid.uuid4()), str(other), PoolKind.SHARED_MOUNT_POINT))
    assert set(env.heartbeat.beats) == {smp.uuid}
    # Detached: no more writes.
    await env.pools.remove(smp.uuid)
    assert env.heartbeat.beats == {}
    await trio.sleep(0.1)  # a write in flight lands or not
    last = content()
    await trio.sleep(0.4)
    assert content() == last > first


async def test_an_unwritable_heartbeat_fences_the_pools_domains_only(
    env_factory: Callable[..., Any], tmp_path: Path
) -> None:
    env = await env_factory(config(**{"ha.heartbeat.timeout": "2"}))
    pool_dir, elsewhere = tmp_path / "pool", tmp_path / "elsewhere"
    pool_dir.mkdir()
    spec = dir_pool(str(uuid.uuid4()), str(pool_dir), PoolKind.SHARED_MOUNT_POINT)
    await env.pools.add(spec)
    on_pool = await env.vm(f"hbt-on-{uuid.uuid4().hex[:6]}", pool_dir / "root.qcow2")
    off_pool = await env.vm(f"hbt-off-{uuid.uuid4().hex[:6]}", elsewhere / "root.qcow2")
    beat = env.heartbeat.beats[spec.uuid]
    await wait_for(lambda: beat.writes >= 2)
    # The storage turns unwritable (here: the heartbeat directory becomes a file).
    hb_dir = pool_dir / "KVMHA"
    for f in hb_dir.iterdir():
        f.unlink()
    hb_dir.rmdir()
    hb_dir.write_text("")
    t0 = trio.current_time()
    await wait_for(lambda: beat.error is not None)
    assert "cannot write" in (beat.error or "")
    await trio.sleep(0.5)
    assert on_pool in await env.running()  # not before ha.heartbeat.timeout (2 s)
    await wait_for(lambda: on_pool in beat.destroyed)
    assert beat.fenced and trio.current_time() - t0 >= 1.8
    running = await env.running()
    assert on_pool not in running and off_pool in running
    assert beat.destroyed == [on_pool]
    # A domain started on the pool while the heartbeat is still down is fenced too.
    late = await env.vm(f"hbt-late-{uuid.uuid4().hex[:6]}", pool_dir / "late.qcow2")
    await wait_for(lambda: late in beat.destroyed)
    assert late not in await env.running()
    # The storage comes back: the heartbeat is written again and fencing stops.
    hb_dir.unlink()
    await wait_for(lambda: not beat.fenced and beat.error is None)
    back = await env.vm(f"hbt-back-{uuid.uuid4().hex[:6]}", pool_dir / "back.qcow2")
    await trio.sleep(0.3)
    assert back in await env.running()
    assert not env.heartbeat.rebooting


async def test_fence_reboot_reboots_after_destroying(
    env_factory: Callable[..., Any], tmp_path: Path
) -> None:
    trigger = tmp_path / "sysrq-trigger"
    env = await env_factory(
        config(**{"ha.fence.reboot": "true"}),
        reboot=functools.partial(reboot_host, trigger, 0),
    )
    gone = tmp_path / "pool"
    gone.mkdir()
    (gone / "KVMHA").write_text("")  # unwritable from the start
    spec = dir_pool(str(uuid.uuid4()), str(gone), PoolKind.SHARED_MOUNT_POINT)
    vm = await env.vm(f"hbt-rb-{uuid.uuid4().hex[:6]}", gone / "root.qcow2")
    await env.pools.add(spec)
    await wait_for(lambda: trigger.exists())
    assert trigger.read_text() == "b" and env.heartbeat.rebooting
    assert vm in env.heartbeat.beats[spec.uuid].destroyed


async def test_an_nfs_pool_that_is_not_mounted_gets_no_heartbeat(
    env_factory: Callable[..., Any],
) -> None:
    # libvirt's test driver "mounts" nothing: /mnt/<uuid> is no mount point, so no write may
    # count (it would land on the local disk, where no neighbour sees it).
    env = await env_factory()
    spec = nfs_pool(str(uuid.uuid4()), "10.0.0.9", "/export")
    await env.pools.add(spec)
    beat = env.heartbeat.beats[spec.uuid]
    await wait_for(lambda: beat.error is not None)
    assert (
        beat.error
        == f"cannot write /mnt/{spec.uuid}/KVMHA/hb-{ME}: /mnt/{spec.uuid} is not mounted"
    )
    assert beat.writes == 0
    await wait_for(lambda: beat.fenced)  # after ha.heartbeat.timeout: fenced (no domains)


async def test_neighbours_are_read_from_every_watched_pool(
    env_factory: Callable[..., Any], tmp_path: Path
) -> None:
    env = await env_factory(config(**{"ha.heartbeat.timeout": "30"}), speed=1)
    max_age = env.cfg.ha_heartbeat_timeout
    assert (await env.heartbeat.check_host(NEIGHBOUR)).dead is None  # no pool: cannot tell
    dirs = [tmp_path / "p1", tmp_path / "p2"]
    for d in dirs:
        d.mkdir()
        await env.pools.add(dir_pool(str(uuid.uuid4()), str(d), PoolKind.SHARED_MOUNT_POINT))

    def write(d: Path, age: float) -> None:
        epoch = int(env.wall() - age)
        write_heartbeat(str(d), NEIGHBOUR, epoch, must_be_mounted=False)

    for d in dirs:
        write(d, 0)
    fresh = await env.heartbeat.check_host(NEIGHBOUR)
    assert fresh.dead is False and len(fresh.readings) == 2
    assert all(r.judgement.liveness is Liveness.ALIVE for r in fresh.readings)
    write(dirs[0], 2 * max_age)  # stale on one pool
    one = await env.heartbeat.check_host(NEIGHBOUR)
    assert one.dead is False  # alive on the other
    assert (await env.heartbeat.check_host(NEIGHBOUR, stop_at_first_dead=True)).dead is True
    write(dirs[1], 2 * max_age)
    both = await env.heartbeat.check_host(NEIGHBOUR)
    assert both.dead is True and "last written 60 s ago (more than 30 s)" in both.details
    # This host's own heartbeat, written by the service, reads alive.
    await wait_for(lambda: all(b.writes for b in env.heartbeat.beats.values()))
    assert (await env.heartbeat.check_host(ME)).dead is False
    with pytest.raises(HeartbeatError):
        await env.heartbeat.check_host("../x")


async def test_fencing_that_cannot_reach_libvirt_says_so_loudly_once(tmp_path: Path) -> None:
    hv = Hypervisor("qemu+tcp://127.0.0.1:1/system", max_backoff=0.2)  # nothing listens
    pools = Pools(hv)
    heartbeat = Heartbeat(pools, lambda: config(), lambda: ME)
    (tmp_path / "KVMHA").write_text("")  # unwritable
    with captured_logs() as logbuf:
        async with trio.open_nursery() as nursery:
            await nursery.start(hv.run)
            await nursery.start(heartbeat.run)
            heartbeat.pool_added(
                dir_pool(str(uuid.uuid4()), str(tmp_path), PoolKind.SHARED_MOUNT_POINT)
            )
            beat = next(iter(heartbeat.beats.values()))
            await wait_for(lambda: beat.fenced)
            await trio.sleep(0.5)  # five more looks at the domains, each failing
            nursery.cancel_scope.cancel()
    lines = [json.loads(line) for line in logbuf.getvalue().splitlines()]
    failed = [e for e in lines if e["event"].startswith("FENCING FAILED: cannot list")]
    assert len(failed) == 1 and failed[0]["level"] == "critical"
    assert "libvirtd is not reachable" in failed[0]["error"]
    assert any(e["event"].startswith("HEARTBEAT LOST") for e in lines)
    assert beat.destroyed == []
