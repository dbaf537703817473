"""Live migration: MigrateCommand on the source, PrepareForMigrationCommand on the target.

The blocking ``migrateToURI3`` runs in its own worker thread (a migration limiter, apart
from the short-call limiter) and is never abandoned: a time-out aborts the libvirt job and
waits for the call to return. The outcome is read from both hosts, not from the exception:
the source is undefined only once the VM runs on the destination.

The command's ``wait`` (vm.migrate.wait when it has none) bounds the whole handling: the
job is aborted early enough to read the outcome within it, and every look at the
destination is bounded (:mod:`agent.hypervisor.remote`). Each migration is a job owned by
:class:`Migrations`, which lives as long as the hypervisor connection: when the agent
stops, running jobs are aborted, their outcome read on both hosts and logged. Migrations
run on a :class:`~agent.hypervisor.connection.Lane` of their own (migration.max.outgoing
threads), so a long one never holds the threads short calls need.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import attrs
import structlog
import trio
from attrs import define, field

from agent.config import AgentConfig, NativeTls
from agent.hypervisor import domains
from agent.hypervisor.connection import Hypervisor, HypervisorError, Lane
from agent.hypervisor.domains import LIVE, DomainState
from agent.hypervisor.migration.call import (
    CallSpec,
    destination_lacks_native_tls,
    migrate_call,
    spec_for,
    uses_native_tls,
)
from agent.hypervisor.migration.errors import diagnose
from agent.hypervisor.migration.monitor import (
    ACTIVE_JOBS,
    POLL_SECONDS,
    MigrationJob,
    handling_limit,
    timeout_for,
    watch,
)
from agent.hypervisor.migration.prepare import incoming_migrations, prepare
from agent.hypervisor.remote import REMOTE_TIMEOUT, RemoteHosts
from agent.observe.observer import observer
from protocol.messages.migration import (
    MigrateAnswer,
    MigrateCommand,
    PrepareForMigrationAnswer,
    PrepareForMigrationCommand,
)

log = structlog.get_logger("agent.hypervisor.migration.engine")
SETTLE_SECONDS = 30  # after an error, how long libvirt may keep the job going


@define
class Migrations:
    config: AgentConfig
    hypervisor: Hypervisor
    outgoing: int = 0
    _lane: Lane = field(init=False)
    _remote: RemoteHosts = field(init=False, factory=RemoteHosts)
    _jobs: set[MigrationJob] = field(init=False, factory=set)
    _idle: trio.Event = field(init=False, factory=trio.Event)
    _nursery: trio.Nursery | None = field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        # Own connections: see agent.hypervisor.connection (a long call delays the others).
        self._lane = self.hypervisor.lane(self.config.max_outgoing_migrations, own_connection=True)
        self._idle.set()

    def apply(self, config: AgentConfig) -> None:
        """A reloaded configuration, for the migrations that start from now on."""
        self.config = config
        self._lane.resize(config.max_outgoing_migrations)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Home of the migration jobs, for as long as the hypervisor connection lives."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    @property
    def running(self) -> int:
        return len(self._jobs)

    async def wait_idle(self) -> None:
        while self._jobs:
            await self._idle.wait()

    def abort_all(self, reason: str, deadline: float) -> None:
        """The agent stops: abort every running migration (abortJob, at once, not at the
        monitor's next poll); each reads its outcome on both hosts by ``deadline``, and
        logs it."""
        for job in self._jobs:
            job.log.warning("aborting the migration", reason=reason)
            job.abort_reason = reason
            job.hurry(deadline)
            job.abort_now.set()
            if self._nursery is not None:
                self._nursery.start_soon(self._abort_job, job)

    async def _abort_job(self, job: MigrationJob) -> None:
        if await self._call_quietly(job.vm, lambda d: d.abortJob()) is None:
            job.log.error("abortJob failed; libvirtd may carry the migration on")

    # --- destination ----------------------------------------------------------------

    async def prepare(
        self,
        cmd: PrepareForMigrationCommand,
        *,
        missing_tls_files: Sequence[str] = (),
        config: AgentConfig | None = None,
    ) -> PrepareForMigrationAnswer:
        """The destination's side (agent.hypervisor.migration.prepare)."""
        return await prepare(
            self.hypervisor, cmd, config or self.config, missing_tls_files=missing_tls_files
        )

    async def incoming(self) -> int:
        return await incoming_migrations(self.hypervisor)

    # --- source ---------------------------------------------------------------------

    async def migrate(
        self, cmd: MigrateCommand, *, secured: bool, config: AgentConfig | None = None
    ) -> MigrateAnswer:
        cfg = config or self.config  # read once: one migration, one configuration
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
        limit = cfg.max_outgoing_migrations
        if self.outgoing >= limit:
            return MigrateAnswer(
                result=False,
                details=f"refusing to migrate {vm}: {self.outgoing} outgoing migrations already "
                f"running (migration.max.outgoing={limit}); retry later",
            )
        job = self._new_job(cmd, cfg, vm, dest, secured)
        self.outgoing += 1  # until the job ends, which may be after the answer
        self._jobs.add(job)
        self._idle = trio.Event()
        if self._nursery is not None:
            self._nursery.start_soon(self._run_job, job, cmd, cfg, secured)
            with trio.move_on_at(job.deadline):
                await job.done.wait()
        else:  # not run by an agent (a unit test): the job is the command
            await self._run_job(job, cmd, cfg, secured)
        if job.answer is not None:
            return job.answer
        waited = handling_limit(cmd.wait, cfg.migrate_wait) or 0
        return MigrateAnswer(
            result=False,
            details=f"Migration of {vm} to {dest} has not ended within {waited:.0f}s: libvirt "
            "has not returned from the migration call, even after it was aborted. The agent "
            "keeps watching it and logs where the VM ends up; check both hosts.",
        )

    def _new_job(
        self, cmd: MigrateCommand, cfg: AgentConfig, vm: str, dest: str, secured: bool
    ) -> MigrationJob:
        uri = f"qemu+{'tls' if secured else 'tcp'}://{dest}/system"
        now = trio.current_time()
        whole = handling_limit(cmd.wait, cfg.migrate_wait)
        abort_after = timeout_for(cmd.wait, cfg.migrate_wait)
        if whole is not None:
            # Leave time, within the command's wait, to read the outcome on both hosts.
            reserve = min(REMOTE_TIMEOUT + 10, whole / 2)
            abort_after = min(abort_after or math.inf, whole - reserve)
        native_tls = uses_native_tls(cfg.migration_native_tls, secured)
        return MigrationJob(
            vm=vm,
            dest=dest,
            uri=uri,
            log=log.bind(vm=vm, dest=dest, uri=uri, native_tls=native_tls),
            deadline=now + whole if whole is not None else math.inf,
            limit=timeout_for(cmd.wait, cfg.migrate_wait),
            abort_after=abort_after,
        )

    async def _run_job(
        self, job: MigrationJob, cmd: MigrateCommand, cfg: AgentConfig, secured: bool
    ) -> None:
        ended = False
        try:
            job.answer = await self._migrate(job, cmd, cfg, secured)
            ended = True
        except Exception as exc:  # a bug: answer it, do not take the agent down
            job.log.exception("migration failed unexpectedly")
            job.answer = MigrateAnswer(result=False, details=f"{type(exc).__name__}: {exc}")
            ended = True
        finally:
            if not ended:  # cancelled: the agent exits now
                job.log.error(
                    "the agent exits before the migration's outcome was read; libvirtd "
                    "finishes or cancels the job on its own: check both hosts",
                    abort_reason=job.abort_reason,
                )
            observer().migration_done(job.vm, job.dest, job.outcome, job.elapsed(), job.details)
            self.outgoing -= 1
            self._jobs.discard(job)
            if not self._jobs:
                self._idle.set()
            job.done.set()

    async def _migrate(
        self, job: MigrationJob, cmd: MigrateCommand, cfg: AgentConfig, secured: bool
    ) -> MigrateAnswer:
        vm, dest, uri, mlog = job.vm, job.dest, job.uri, job.log
        policy = cfg.migration_native_tls
        native = uses_native_tls(policy, secured)
        spec = spec_for(cmd, vm=vm, dest=dest, uri=uri, native_tls=native, speed=cfg.migrate_speed)
        if not secured:
            mlog.warning("migrating over qemu+tcp: guest memory crosses the network unencrypted")
        elif not native:
            mlog.warning(
                "migration.native.tls=off: only libvirt's control channel is encrypted; guest "
                "memory crosses the network in clear"
            )

        try:
            state = await self._source_state(vm)
        except HypervisorError as exc:
            return MigrateAnswer(result=False, details=f"cannot migrate {vm}: {exc}")
        if state not in LIVE:
            return MigrateAnswer(
                result=False,
                details=f"cannot migrate {vm}: it is not running on this host ({state})",
            )

        bridges = await self._bridges(vm)  # read now: the domain leaves this host
        started = trio.current_time()
        error = await self._attempt(job, cfg, spec)
        warning = None
        if (
            error is not None
            and native
            and policy is NativeTls.PREFERRED
            and destination_lacks_native_tls(error)
            and await self._state_or_none(vm) in LIVE
        ):
            # The destination refused before any data moved (a host without /etc/pki/qemu,
            # such as one run by CloudStack's Java agent): again, without native TLS.
            warning = (
                f"WARNING: {dest} cannot receive with QEMU native TLS ({error.strip()}); "
                "migration.native.tls=preferred: migrated with libvirt's TLS control channel "
                "only, guest memory crossed the network unencrypted. Run `kvm-agent setup "
                f"--secure-libvirtd` on {dest} (it also works on a host run by CloudStack's "
                "Java agent: it needs only cloud.crt, cloud.key and cloud.ca.crt)"
            )
            mlog.warning(
                "destination cannot receive with native TLS; falling back to the control "
                "channel's TLS only (migration.native.tls=preferred)",
                error=error,
            )
            error = await self._attempt(job, cfg, attrs.evolve(spec, native_tls=False))
        answer = await self._conclude(job, error, trio.current_time() - started)
        if answer.result:
            # As the Java agent after a success: the VLAN bridges no VM uses any more go
            # (unless vlanToPersistenceMap keeps them); label bridges stay.
            from agent.hypervisor import vifs  # NIC plumbing: loaded when first needed

            removed = await vifs.unplug_nics(bridges, cmd.vlan_to_persistence_map)
            mlog.info("source NICs unplugged", bridges=bridges, deleted=removed)
        if warning is not None:
            answer = attrs.evolve(answer, details=f"{answer.details} {warning}")
        return answer

    async def _attempt(self, job: MigrationJob, cfg: AgentConfig, spec: CallSpec) -> str | None:
        """One migrateToURI3, watched by the monitor; libvirt's error text, or None."""
        job.log.info(
            "migration started",
            timeout_s=job.abort_after,
            bandwidth_mib_s=cfg.migrate_speed,
            native_tls=spec.native_tls,
            storage=sorted(spec.storage),
        )
        error: str | None = None
        async with trio.open_nursery() as nursery:
            done = trio.Event()
            nursery.start_soon(watch, job, cfg, done, self._call_quietly)
            try:
                # Waited for to the end; given up only if the agent exits meanwhile.
                await self._lane.call(lambda conn: migrate_call(conn, spec), abandon_on_cancel=True)
            except HypervisorError as exc:
                error = str(exc)
            finally:
                done.set()
        return error

    async def _conclude(
        self, job: MigrationJob, error: str | None, elapsed: float
    ) -> MigrateAnswer:
        """Where the VM is, read on both hosts (each look bounded), and what to answer."""
        vm, dest, uri, mlog, monitor = job.vm, job.dest, job.uri, job.log, job.monitor
        # The exception does not say where the VM is: let any job finish, then look.
        if error is not None:
            await self._settle(job)
        source_state = await self._state_or_none(vm)
        if error is None and not monitor.paused_by_us and source_state not in LIVE:
            # libvirt returned success: the destination has finished and this host confirmed,
            # so the VM runs there. No look over the network (a new TLS connection to the
            # destination's libvirtd was most of the agent's cost over a bare migrateToURI3).
            dest_state: str = DomainState.RUNNING
        else:
            dest_state = await self._remote.domain_state(uri, vm, job.bounded(REMOTE_TIMEOUT))
        on_dest = dest_state in LIVE
        on_source = source_state in LIVE

        if on_dest and not on_source:
            if monitor.paused_by_us or dest_state == DomainState.PAUSED:
                await self._resume_on_dest(job)
            await self._undefine_source(vm, mlog)
            if error is not None:
                mlog.warning(
                    "libvirt reported an error but the VM runs on the destination", error=error
                )
            mlog.info("migration completed", seconds=round(elapsed, 2))
            return MigrateAnswer(result=True, details=f"{vm} migrated to {dest} in {elapsed:.1f}s")

        paused_here = on_source and monitor.paused_by_us and source_state == DomainState.PAUSED
        # We paused it so that the migration converges; it stayed here: run it again.
        if paused_here and await self._call_quietly(vm, lambda d: d.resume()) is None:
            mlog.error("could not resume the VM paused for the migration; resume it by hand")
        if on_source:
            where = f"The VM is still running on this host ({source_state})."
        elif dest_state.startswith("unknown"):
            where = (
                f"The VM is not running on this host ({source_state}) and the destination "
                f"could not be asked ({dest_state}); it is still defined here, check both hosts."
            )
        else:
            where = (
                f"The VM is NOT running on either host (source: {source_state}, destination: "
                f"{dest_state}); it is still defined here, check both hosts."
            )
        if job.abort_reason is not None:
            details = f"Migration of {vm} to {dest} was aborted: {job.abort_reason}. {where}"
        elif monitor.timed_out:
            details = (
                f"Migration of VM [{vm}] was cancelled by CloudStack due to time out after "
                f"{int(job.limit or job.abort_after or 0)} seconds. {where}"
            )
        else:
            reason = error or f"the VM is on neither host as expected (destination: {dest_state})"
            d = diagnose(reason, vm=vm, source="this host", dest=dest, uri=uri)
            details = f"Migration of {vm} to {dest} failed: {d.summary}. Check: {d.check}. {where}"
        mlog.error("migration failed", error=error, details=details, dest_state=dest_state)
        return MigrateAnswer(result=False, details=details)

    async def _bridges(self, vm: str) -> list[str]:
        from agent.hypervisor import vifs  # NIC plumbing: loaded when first needed

        xml = await self._call_quietly(vm, lambda d: d.XMLDesc(0))
        return vifs.interface_bridges(xml) if isinstance(xml, str) else []

    async def _call_quietly(self, vm: str, fn: Any) -> Any:
        try:
            return await self.hypervisor.call(lambda c: fn(c.lookupByName(vm)))
        except HypervisorError:
            return None

    async def _source_state(self, vm: str) -> str:
        return await self.hypervisor.call(lambda conn: domains.state_or_not_defined(conn, vm))

    async def _state_or_none(self, vm: str) -> str:
        try:
            return await self._source_state(vm)
        except HypervisorError as exc:
            return f"unknown: {exc}"

    async def _settle(self, job: MigrationJob) -> None:
        with job.bounded(SETTLE_SECONDS):
            while True:
                stats = await self._call_quietly(job.vm, lambda d: d.jobStats())
                if not stats or stats.get("type") not in ACTIVE_JOBS:
                    return
                await trio.sleep(POLL_SECONDS)

    async def _resume_on_dest(self, job: MigrationJob) -> None:
        try:
            await self._remote.resume_paused(job.uri, job.vm, job.bounded(REMOTE_TIMEOUT))
        except HypervisorError as exc:
            job.log.error(
                "could not resume the VM on the destination; resume it there by hand",
                error=str(exc),
            )

    async def _undefine_source(self, vm: str, mlog: Any) -> None:
        try:
            await self.hypervisor.call(lambda conn: domains.undefine_if_stopped(conn, vm))
        except HypervisorError as exc:
            mlog.warning("could not undefine the source copy", error=str(exc))
