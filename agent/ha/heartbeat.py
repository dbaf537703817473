"""The Heartbeat service: this host's heartbeat on every watched pool, the neighbours' read,
and fencing when this host's heartbeat cannot be written.

Which pools: those the MS attaches (the service is a :class:`PoolWatcher` of
:class:`~agent.hypervisor.pools.Pools`) that are NFS — where the Java agent writes one — or
SharedMountPoint when ``ha.heartbeat.sharedmountpoint=true``. Local pools never.

How often: every ``ha.heartbeat.interval`` seconds (10 by default). The investigators read a
heartbeat older than 60 s as dead (kvmheartbeat.sh ``-t`` = the Java agent's
``kvm.heartbeat.update.frequency``/1000); the Java agent writes only every 60 s, so its file
is routinely close to that age and one slow write makes it read dead. At 10 s, five writes in
a row may fail or stall before a neighbour could read this host as dead; each costs one small
write and fsync per pool.

Fencing: when no write to a pool has succeeded for ``ha.heartbeat.timeout`` seconds (60, the
age at which neighbours read the host as dead), HA may restart this host's VMs elsewhere
while they still run here. The Java agent then reboots the whole host. This one destroys the
domains whose disks are on that pool (logged at critical level), keeps destroying any that
appear there while the heartbeat stays unwritable, and reboots only with
``ha.fence.reboot=true``. A guard task per pool decides, apart from the writes: a write
stuck on a dead NFS server does not delay the fence.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import attrs
import structlog
import trio
from attrs import define, frozen

from agent.config import AgentConfig
from agent.ha.beat import (
    HeartbeatError,
    Judgement,
    Liveness,
    check_ip,
    heartbeat_path,
    judge,
    read_heartbeat,
    write_heartbeat,
)
from agent.ha.fence import reboot_host
from agent.hypervisor.connection import HypervisorError
from agent.hypervisor.pooldefs import PoolKind, PoolSpec
from agent.hypervisor.pools import Pools

log = structlog.get_logger("agent.ha")

READ_TIMEOUT = 10.0  # per pool; the MS waits 20 s for a CheckOnHostCommand's answer
GUARD_TICK = 1.0  # the fence decision's granularity (at most), seconds


@frozen
class WatchedPool:
    uuid: str
    mount_point: str  # where KVMHA/ is
    nfs: bool  # must be a mount point for a write to count

    @classmethod
    def of(cls, spec: PoolSpec) -> WatchedPool:
        return cls(spec.uuid, spec.target, spec.kind is PoolKind.NFS)


def watched(spec: PoolSpec, config: AgentConfig) -> bool:
    """Whether this host writes a heartbeat on ``spec``'s pool."""
    if spec.kind is PoolKind.NFS:
        return True
    return spec.kind is PoolKind.SHARED_MOUNT_POINT and config.ha_heartbeat_shared_mount_point


@define
class PoolBeat:
    """One watched pool's heartbeat, owned by that pool's tasks."""

    pool: WatchedPool
    last_ok: float  # trio time of the last successful write (or when watching began)
    path: Path | None = None
    error: str | None = None
    writes: int = 0
    fenced: bool = False
    destroyed: list[str] = attrs.field(factory=list)
    failures: set[str] = attrs.field(factory=set)  # fencing failures logged (once each)
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    # One thread at a time per pool for writes, one for reads: calls a dead NFS server hangs
    # hold at most these (an abandoned read keeps its token until its thread returns).
    writing: trio.CapacityLimiter = attrs.field(factory=lambda: trio.CapacityLimiter(1))
    reading: trio.CapacityLimiter = attrs.field(factory=lambda: trio.CapacityLimiter(1))


@frozen
class Reading:
    pool: str
    path: str
    judgement: Judgement


@frozen
class HostCheck:
    """A neighbour's heartbeat as read on every watched pool. ``dead``: None when this host
    watches no pool (it cannot tell)."""

    ip: str
    dead: bool | None
    readings: tuple[Reading, ...]

    @property
    def details(self) -> str:
        if self.dead is None:
            return (
                "no storage pool with a heartbeat on this host (NFS, or SharedMountPoint with "
                f"ha.heartbeat.sharedmountpoint=true): cannot tell whether {self.ip} is alive"
            )
        return "; ".join(f"{r.path}: {r.judgement.reason}" for r in self.readings)


class Heartbeat:
    """``run()`` is a task for the life of the agent (started by the composition root)."""

    def __init__(
        self,
        pools: Pools,
        config: Callable[[], AgentConfig],
        host_ip: Callable[[], str | None],
        *,
        wall: Callable[[], float] = time.time,
        reboot: Callable[[], None] = reboot_host,
    ) -> None:
        self._pools = pools
        self._config = config
        self._host_ip = host_ip  # called in a worker thread before each write
        self._wall = wall  # epoch seconds, for the file's content
        self._reboot = reboot
        self._beats: dict[str, PoolBeat] = {}
        self._nursery: trio.Nursery | None = None
        self.rebooting = False

    @property
    def beats(self) -> dict[str, PoolBeat]:
        """The watched pools' state, by pool uuid (a copy)."""
        return dict(self._beats)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for beat in self._beats.values():
                    nursery.start_soon(self._watch, beat)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    # --- PoolWatcher ------------------------------------------------------------------

    def pool_added(self, spec: PoolSpec) -> None:
        if not watched(spec, self._config()):
            return
        pool = WatchedPool.of(spec)
        old = self._beats.get(pool.uuid)
        if old is not None and old.pool == pool:
            return  # the MS attaches every pool again at each connect
        if old is not None:
            old.scope.cancel()
        beat = PoolBeat(pool, last_ok=trio.current_time())
        self._beats[pool.uuid] = beat
        log.info("heartbeat: watching pool", pool=pool.uuid, mount_point=pool.mount_point)
        if self._nursery is not None:
            self._nursery.start_soon(self._watch, beat)

    def pool_removed(self, uuid: str) -> None:
        beat = self._beats.pop(uuid, None)
        if beat is not None:
            beat.scope.cancel()
            log.info("heartbeat: pool no longer watched", pool=uuid)

    # --- writing and fencing ----------------------------------------------------------

    async def _watch(self, beat: PoolBeat) -> None:
        with beat.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_loop, beat)
                nursery.start_soon(self._guard_loop, beat)

    def _write(self, pool: WatchedPool, epoch: int) -> Path:
        ip = self._host_ip()
        if not ip:
            raise HeartbeatError("this host has no IPv4 address on private.network.device")
        return write_heartbeat(pool.mount_point, ip, epoch, must_be_mounted=pool.nfs)

    async def _write_loop(self, beat: PoolBeat) -> None:
        while True:
            interval = self._config().ha_heartbeat_interval
            started = trio.current_time()
            epoch = int(self._wall())
            try:
                # Abandoned only when the pool is no longer watched or the agent exits: nobody
                # needs that write's outcome then, and a dead NFS server must not hold the exit.
                path = await trio.to_thread.run_sync(
                    self._write, beat.pool, epoch, limiter=beat.writing, abandon_on_cancel=True
                )
            except HeartbeatError as exc:
                beat.error = str(exc)
                log.warning(
                    "cannot write the heartbeat",
                    pool=beat.pool.uuid,
                    error=beat.error,
                    unwritten_for=round(trio.current_time() - beat.last_ok, 1),
                    fence_at=self._config().ha_heartbeat_timeout,
                )
            else:
                if beat.error is not None or beat.fenced:
                    log.warning("heartbeat written again", pool=beat.pool.uuid, path=str(path))
                beat.last_ok, beat.path, beat.error = trio.current_time(), path, None
                beat.writes += 1
                beat.fenced = False
                beat.failures.clear()
            await trio.sleep_until(started + interval)

    async def _guard_loop(self, beat: PoolBeat) -> None:
        while True:
            cfg = self._config()
            unwritten = trio.current_time() - beat.last_ok
            if unwritten >= cfg.ha_heartbeat_timeout:
                await self._fence(beat, unwritten, cfg)
            # Close to the limit before fencing; then a look per interval for domains that
            # start on the pool meanwhile.
            tick = cfg.ha_heartbeat_interval
            await trio.sleep(tick if beat.fenced else min(GUARD_TICK, tick))

    async def _fence(self, beat: PoolBeat, unwritten: float, cfg: AgentConfig) -> None:
        pool = beat.pool
        first = not beat.fenced
        if first:
            beat.fenced = True
            log.critical(
                "HEARTBEAT LOST: fencing the domains whose disks are on this pool, so that "
                "they cannot run twice when HA restarts them on another host",
                pool=pool.uuid,
                mount_point=pool.mount_point,
                unwritten_for=round(unwritten, 1),
                limit=cfg.ha_heartbeat_timeout,
                error=beat.error,
            )
        try:
            victims = await self._pools.domains_on(pool.mount_point, pool.uuid)
        except HypervisorError as exc:
            self._failed_fence(beat, "cannot list the domains", error=str(exc))
            victims = []
        for name in victims:
            try:
                await self._pools.destroy_domain(name)
            except HypervisorError as exc:
                self._failed_fence(beat, "domain not destroyed", vm=name, error=str(exc))
                continue
            beat.destroyed.append(name)
            log.critical("FENCED: domain destroyed", vm=name, pool=pool.uuid)
        if first and not victims:
            log.critical("fencing: no running domain has a disk on this pool", pool=pool.uuid)
        if cfg.ha_fence_reboot and not self.rebooting:
            self.rebooting = True
            log.critical("ha.fence.reboot=true: REBOOTING THE HOST NOW", pool=pool.uuid)
            await trio.to_thread.run_sync(self._reboot, abandon_on_cancel=True)

    @staticmethod
    def _failed_fence(beat: PoolBeat, what: str, **context: str) -> None:
        """Logged once per failure while the heartbeat stays lost (the guard retries)."""
        key = f"{what} {sorted(context.items())}"
        if key not in beat.failures:
            beat.failures.add(key)
            log.critical(
                f"FENCING FAILED: {what}; the VMs on this pool may run twice: stop them by hand",
                pool=beat.pool.uuid,
                **context,
            )

    # --- reading a neighbour's heartbeat ------------------------------------------------

    async def check_host(self, ip: str | None, *, stop_at_first_dead: bool = False) -> HostCheck:
        """Is the host ``ip`` alive, by its heartbeat on the watched pools (HeartbeatError
        for an IP that cannot name a file)?

        A pool whose file cannot be read, or says nothing usable, counts as beating (as the
        Java checker). Dead on one pool is enough with ``stop_at_first_dead`` (the MS's
        ``kvm.ha.fence.on.storage.heartbeat.failure``); otherwise it must be dead on all of
        them (the Java agent keeps the last pool's result, in no fixed order).
        """
        ip = check_ip(ip)
        beats = list(self._beats.values())
        if not beats:
            return HostCheck(ip, None, ())
        max_age = self._config().ha_heartbeat_timeout
        readings: list[Reading] = []

        async def read(beat: PoolBeat) -> None:
            pool = beat.pool
            path = str(heartbeat_path(pool.mount_point, ip))
            with trio.move_on_after(READ_TIMEOUT):
                try:
                    content = await trio.to_thread.run_sync(
                        lambda: read_heartbeat(pool.mount_point, ip, must_be_mounted=pool.nfs),
                        limiter=beat.reading,
                        abandon_on_cancel=True,  # a read changes nothing
                    )
                except HeartbeatError as exc:
                    found = Judgement(Liveness.UNKNOWN, None, str(exc))
                else:
                    found = judge(content, int(self._wall()), max_age)
                readings.append(Reading(pool.uuid, path, found))
                return
            no_answer = f"no answer from the storage in {READ_TIMEOUT:g} s"
            readings.append(Reading(pool.uuid, path, Judgement(Liveness.UNKNOWN, None, no_answer)))

        async with trio.open_nursery() as nursery:
            for beat in beats:
                nursery.start_soon(read, beat)
        readings.sort(key=lambda r: r.pool)
        dead = [not r.judgement.liveness.beating for r in readings]
        return HostCheck(ip, any(dead) if stop_at_first_dead else all(dead), tuple(readings))
