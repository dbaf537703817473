"""Live migration: MigrateCommand on the source, PrepareForMigrationCommand on the target.

The blocking ``migrateToURI3`` runs in its own worker thread (a migration limiter, apart
from the short-call limiter) and is never abandoned: a time-out aborts the libvirt job and
waits for the call to return. The outcome is read from both hosts, not from the exception:
the source is undefined only once the VM runs on the destination.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import libvirt
import structlog
import trio
from attrs import define, field

from agent.config import AgentConfig
from agent.hypervisor import Hypervisor, HypervisorError
from agent.migration_errors import diagnose
from agent.pki import PKI_LINKS
from protocol.messages import (
    MigrateAnswer,
    MigrateCommand,
    PrepareForMigrationAnswer,
    PrepareForMigrationCommand,
)

log = structlog.get_logger("agent.migration")
MiB = 1024 * 1024
POLL_SECONDS = 0.5
STALL_POLLS = 6  # no new low of data_remaining for this many polls = stalled
DOWNTIME_STEPS = 5
SETTLE_SECONDS = 60  # after an error, how long libvirt may keep the job going

_ACTIVE_JOBS = (libvirt.VIR_DOMAIN_JOB_BOUNDED, libvirt.VIR_DOMAIN_JOB_UNBOUNDED)
_SERVER_PKI = tuple(
    p for p in PKI_LINKS if p.startswith(("etc/pki/CA/", "etc/pki/libvirt/", "etc/pki/qemu/"))
)


@define
class MonitorState:
    """What the monitor saw of one migration job."""

    percent: float = 0.0
    low_remaining: int | None = None
    polls_without_progress: int = 0
    downtime_step: int = 0
    paused_by_us: bool = False
    timed_out: bool = False


def rewrite_graphics_listen(xml: str, dest_ip: str) -> str:
    """Point VNC/SPICE listen addresses at the destination, as the Java agent does."""

    def fix(match: re.Match[str]) -> str:
        tag = match.group(0)
        return re.sub(r"(listen|address)='[^']*'", lambda m: f"{m.group(1)}='{dest_ip}'", tag)

    return re.sub(r"<graphics\b[^>]*>|<listen\b[^>]*type='address'[^>]*>", fix, xml)


def timeout_for(cmd_wait: int, configured: int) -> float | None:
    """The migration's limit in seconds: the smaller of vm.migrate.wait and the command's."""
    limits = [w for w in (cmd_wait, configured) if w and w > 0]
    return float(min(limits)) if limits else None


@define
class Migrations:
    config: AgentConfig
    hypervisor: Hypervisor
    outgoing: int = 0
    _limiter: trio.CapacityLimiter = field(init=False)

    def __attrs_post_init__(self) -> None:
        self._limiter = trio.CapacityLimiter(self.config.max_outgoing_migrations)

    # --- destination ----------------------------------------------------------------

    async def prepare(
        self, cmd: PrepareForMigrationCommand, *, secured: bool, root: Path = Path("/")
    ) -> PrepareForMigrationAnswer:
        vm = cmd.vm_name or "?"
        if not await self.hypervisor.healthy():
            return PrepareForMigrationAnswer(
                result=False,
                details=f"cannot receive {vm}: libvirtd on this host is not reachable "
                f"({self.hypervisor.last_error})",
            )
        if secured:
            missing = [str(root / p) for p in _SERVER_PKI if not (root / p).exists()]
            if missing:
                return PrepareForMigrationAnswer(
                    result=False,
                    details=f"cannot receive {vm} securely: missing {', '.join(missing)} "
                    "(run `kvm-agent setup --secure-libvirtd`)",
                )
        incoming = await self.incoming()
        limit = self.config.max_incoming_migrations
        if incoming >= limit:
            return PrepareForMigrationAnswer(
                result=False,
                details=f"cannot receive {vm}: {incoming} incoming migrations already in "
                f"progress (migration.max.incoming={limit})",
            )
        return PrepareForMigrationAnswer(result=True)

    async def incoming(self) -> int:
        """Domains paused because an incoming migration is filling them."""

        def count(conn: Any) -> int:
            n = 0
            for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_PAUSED):
                state, reason = dom.state()
                if (
                    state == libvirt.VIR_DOMAIN_PAUSED
                    and reason == libvirt.VIR_DOMAIN_PAUSED_MIGRATION
                ):
                    n += 1
            return n

        try:
            return await self.hypervisor.call(count)
        except HypervisorError:
            return 0

    # --- source ---------------------------------------------------------------------

    async def migrate(self, cmd: MigrateCommand, *, secured: bool) -> MigrateAnswer:
        vm, dest = cmd.vm_name, cmd.dest_ip
        if not vm or not dest:
            return MigrateAnswer(
                result=False, details="MigrateCommand needs vmName and destinationIp"
            )
        if cmd.dest_secured is False and secured:
            return MigrateAnswer(
                result=False,
                details=f"refusing to migrate {vm}: this host is secured but the destination "
                f"{dest} is not; guest memory would cross the network in clear",
            )
        limit = self.config.max_outgoing_migrations
        if self.outgoing >= limit:
            return MigrateAnswer(
                result=False,
                details=f"refusing to migrate {vm}: {self.outgoing} outgoing migrations already "
                f"running (migration.max.outgoing={limit}); retry later",
            )
        self.outgoing += 1
        try:
            return await self._migrate(cmd, vm, dest, secured)
        finally:
            self.outgoing -= 1

    async def _migrate(
        self, cmd: MigrateCommand, vm: str, dest: str, secured: bool
    ) -> MigrateAnswer:
        cfg = self.config
        scheme = "tls" if secured else "tcp"
        uri = f"qemu+{scheme}://{dest}/system"
        flags = (
            libvirt.VIR_MIGRATE_LIVE
            | libvirt.VIR_MIGRATE_PEER2PEER
            | libvirt.VIR_MIGRATE_PERSIST_DEST
        )
        native_tls = secured and cfg.migration_native_tls
        if native_tls:
            flags |= libvirt.VIR_MIGRATE_TLS  # guest memory encrypted, not only libvirt's channel
        if cmd.auto_convergence:
            flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
        if cmd.migrate_storage:
            flags |= (
                libvirt.VIR_MIGRATE_NON_SHARED_INC
                if cmd.migrate_non_shared_inc
                else libvirt.VIR_MIGRATE_NON_SHARED_DISK
            )
        mlog = log.bind(vm=vm, dest=dest, uri=uri, native_tls=native_tls)
        if not secured:
            mlog.warning("migrating over qemu+tcp: guest memory crosses the network unencrypted")

        try:
            state = await self._source_state(vm)
        except HypervisorError as exc:
            return MigrateAnswer(result=False, details=f"cannot migrate {vm}: {exc}")
        if state not in ("running", "paused"):
            return MigrateAnswer(
                result=False,
                details=f"cannot migrate {vm}: it is not running on this host ({state})",
            )

        limit = timeout_for(cmd.wait, cfg.migrate_wait)
        monitor = MonitorState()
        error: str | None = None
        mlog.info("migration started", timeout_s=limit, bandwidth_mib_s=cfg.migrate_speed)
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            done = trio.Event()
            nursery.start_soon(self._monitor, vm, monitor, limit, done, mlog)
            try:
                await self.hypervisor.call(
                    lambda conn: _migrate_call(conn, vm, dest, uri, flags, cfg.migrate_speed),
                    limiter=self._limiter,
                )
            except HypervisorError as exc:
                error = str(exc)
            finally:
                done.set()
        elapsed = trio.current_time() - started

        # The exception does not say where the VM is: let any job finish, then look.
        if error is not None:
            await self._settle(vm)
        source_state = await self._state_or_none(vm)
        dest_state = await self._dest_state(uri, vm)
        on_dest = dest_state in ("running", "paused")
        on_source = source_state in ("running", "paused")

        if on_dest and not on_source:
            if monitor.paused_by_us or dest_state == "paused":
                await self._resume_on_dest(uri, vm, mlog)
            await self._undefine_source(vm, mlog)
            if error is not None:
                mlog.warning(
                    "libvirt reported an error but the VM runs on the destination", error=error
                )
            mlog.info("migration completed", seconds=round(elapsed, 2))
            return MigrateAnswer(result=True, details=f"{vm} migrated to {dest} in {elapsed:.1f}s")

        where = (
            f"The VM is still running on this host ({source_state})."
            if on_source
            else f"The VM is NOT running on either host (source: {source_state}, destination: "
            f"{dest_state}); it is still defined here, check both hosts."
        )
        if monitor.timed_out:
            details = (
                f"Migration of VM [{vm}] was cancelled by CloudStack due to time out after "
                f"{int(limit or 0)} seconds. {where}"
            )
        else:
            reason = error or f"the VM is on neither host as expected (destination: {dest_state})"
            d = diagnose(reason, vm=vm, source="this host", dest=dest, uri=uri)
            details = f"Migration of {vm} to {dest} failed: {d.summary}. Check: {d.check}. {where}"
        mlog.error("migration failed", error=error, details=details)
        return MigrateAnswer(result=False, details=details)

    async def _monitor(
        self,
        vm: str,
        state: MonitorState,
        limit: float | None,
        done: trio.Event,
        mlog: Any,
    ) -> None:
        cfg = self.config
        started = trio.current_time()
        steps = (
            [cfg.migrate_downtime * (i + 1) // DOWNTIME_STEPS for i in range(DOWNTIME_STEPS)]
            if cfg.migrate_downtime > 0
            else []
        )
        while not done.is_set():
            with trio.move_on_after(POLL_SECONDS):
                await done.wait()
            if done.is_set():
                return
            elapsed = trio.current_time() - started
            if limit is not None and elapsed >= limit and not state.timed_out:
                state.timed_out = True
                mlog.warning("migration timed out, aborting", after_s=round(elapsed, 1))
                await self._call_quietly(vm, lambda d: d.abortJob())
                continue
            pause_due = 0 < cfg.migrate_pause_after <= elapsed * 1000
            if pause_due and not state.paused_by_us:
                state.paused_by_us = True
                mlog.warning(
                    "pausing the VM so that the migration converges",
                    after_ms=cfg.migrate_pause_after,
                )
                await self._call_quietly(vm, lambda d: d.suspend())
            stats = await self._call_quietly(vm, lambda d: d.jobStats())
            if not stats or stats.get("type") not in _ACTIVE_JOBS:
                continue
            self._progress(stats, state, mlog)
            if (
                steps
                and state.downtime_step < len(steps)
                and (
                    (state.downtime_step == 0 and elapsed >= 1.0)
                    or state.polls_without_progress >= STALL_POLLS
                )
            ):
                downtime = steps[state.downtime_step]
                state.downtime_step += 1
                state.polls_without_progress = 0
                mlog.info("raising max downtime", downtime_ms=downtime, step=state.downtime_step)
                await self._call_quietly(vm, lambda d, ms=downtime: d.migrateSetMaxDowntime(ms, 0))

    @staticmethod
    def _progress(stats: dict[str, Any], state: MonitorState, mlog: Any) -> None:
        total = int(stats.get("data_total", 0))
        processed = int(stats.get("data_processed", 0))
        remaining = int(stats.get("data_remaining", 0))
        if total > 0:
            # Never backwards, and 100 only once the job is over.
            state.percent = max(state.percent, min(99.0, 100.0 * processed / total))
        if state.low_remaining is None or remaining < state.low_remaining:
            state.low_remaining = remaining
            state.polls_without_progress = 0
        else:
            state.polls_without_progress += 1
        mlog.info(
            "migration progress",
            percent=round(state.percent, 1),
            mib_s=round(int(stats.get("memory_bps", 0)) / MiB, 1),
            remaining_mib=round(remaining / MiB, 1),
            iteration=stats.get("memory_iteration"),
            stalled=state.polls_without_progress >= STALL_POLLS,
        )

    # --- looking at both hosts ------------------------------------------------------

    async def _call_quietly(self, vm: str, fn: Any) -> Any:
        try:
            return await self.hypervisor.call(lambda c: fn(c.lookupByName(vm)))
        except HypervisorError:
            return None

    async def _source_state(self, vm: str) -> str:
        def state(conn: Any) -> str:
            try:
                dom = conn.lookupByName(vm)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return "not defined"
                raise
            return _state_name(dom.state()[0])

        return await self.hypervisor.call(state)

    async def _state_or_none(self, vm: str) -> str:
        try:
            return await self._source_state(vm)
        except HypervisorError as exc:
            return f"unknown: {exc}"

    async def _settle(self, vm: str) -> None:
        with trio.move_on_after(SETTLE_SECONDS):
            while True:
                stats = await self._call_quietly(vm, lambda d: d.jobStats())
                if not stats or stats.get("type") not in _ACTIVE_JOBS:
                    return
                await trio.sleep(POLL_SECONDS)

    async def _dest_state(self, uri: str, vm: str) -> str:
        def look() -> str:
            try:
                conn = libvirt.open(uri)
            except libvirt.libvirtError as exc:
                return f"unknown: {exc.get_error_message()}"
            try:
                return _state_name(conn.lookupByName(vm).state()[0])
            except libvirt.libvirtError:
                return "not defined"
            finally:
                conn.close()

        return await trio.to_thread.run_sync(look, limiter=self.hypervisor.limiter)

    async def _resume_on_dest(self, uri: str, vm: str, mlog: Any) -> None:
        def resume() -> None:
            conn = libvirt.open(uri)
            try:
                dom = conn.lookupByName(vm)
                if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                    dom.resume()
            finally:
                conn.close()

        try:
            await trio.to_thread.run_sync(resume, limiter=self.hypervisor.limiter)
        except libvirt.libvirtError as exc:
            mlog.error("could not resume the VM on the destination", error=exc.get_error_message())

    async def _undefine_source(self, vm: str, mlog: Any) -> None:
        def undefine(conn: Any) -> None:
            try:
                dom = conn.lookupByName(vm)
            except libvirt.libvirtError:
                return  # already gone
            if not dom.isActive() and dom.isPersistent():
                dom.undefine()

        try:
            await self.hypervisor.call(undefine)
        except HypervisorError as exc:
            mlog.warning("could not undefine the source copy", error=str(exc))


def _migrate_call(conn: Any, vm: str, dest: str, uri: str, flags: int, speed: int) -> None:
    dom = conn.lookupByName(vm)
    xml = rewrite_graphics_listen(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE), dest)
    params: dict[str, Any] = {libvirt.VIR_MIGRATE_PARAM_DEST_XML: xml}
    if speed > 0:
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = speed  # MiB/s
    dom.migrateToURI3(uri, params, flags)


_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutting down",
    libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
}


def _state_name(state: int) -> str:
    return _STATES.get(state, f"state {state}")
