"""One outgoing migration while it runs: its limits, what the monitor saw, and the monitor.

The monitor polls libvirt's job statistics twice a second: it logs progress, raises the
maximum downtime step by step when the migration stalls, pauses the VM after
vm.migrate.pauseafter, and aborts the job (abortJob) on time-out or when the agent stops.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Awaitable, Callable
from typing import Any

import libvirt
import trio
from attrs import define, field

from agent.config import AgentConfig
from protocol.messages.migration import MigrateAnswer

MiB = 1024 * 1024
POLL_SECONDS = 0.5
STALL_POLLS = 6  # no new low of data_remaining for this many polls = stalled
DOWNTIME_STEPS = 5
ANSWER_MARGIN = 0.5  # seconds kept, before a deadline, to build and send the answer
ACTIVE_JOBS = (libvirt.VIR_DOMAIN_JOB_BOUNDED, libvirt.VIR_DOMAIN_JOB_UNBOUNDED)

# call(vm, fn): fn(domain) in a worker thread; None if libvirt failed
Call = Callable[[str, Callable[[Any], Any]], Awaitable[Any]]


def timeout_for(cmd_wait: int, configured: int) -> float | None:
    """The migration's limit in seconds: the smaller of vm.migrate.wait and the command's."""
    limits = [w for w in (cmd_wait, configured) if w and w > 0]
    return float(min(limits)) if limits else None


OUTCOME_SECONDS = 60  # after an abort at vm.migrate.wait: libvirt's cancel, both hosts read


def handling_limit(cmd_wait: int, configured: int) -> float | None:
    """The bound on the whole handling of a MigrateCommand: its ``wait``; when it gives none
    (the MS's plain migration sets none and waits its own 1800 s), vm.migrate.wait (the MS's
    migratewait) for the migration itself plus the time to read its outcome, as the Java
    agent aborts at vm.migrate.wait and then waits for the job's end."""
    if cmd_wait and cmd_wait > 0:
        return float(cmd_wait)
    return float(configured) + OUTCOME_SECONDS if configured and configured > 0 else None


@define
class MonitorState:
    """What the monitor saw of one migration job."""

    percent: float = 0.0
    low_remaining: int | None = None
    polls_without_progress: int = 0
    downtime_step: int = 0
    paused_by_us: bool = False
    timed_out: bool = False


@define(eq=False)
class MigrationJob:
    """One outgoing migration, from its start to its logged outcome. It may outlive the
    command (which answers by its deadline): the libvirt call is never abandoned."""

    vm: str
    dest: str
    uri: str
    log: Any
    deadline: float  # of the whole handling; math.inf when unbounded
    limit: float | None  # the time-out as configured (vm.migrate.wait / the command's wait)
    abort_after: float | None  # when the job is aborted, from the start; None = never
    monitor: MonitorState = field(factory=MonitorState)
    abort_reason: str | None = None  # set when the agent stops
    abort_now: trio.Event = field(factory=trio.Event)
    done: trio.Event = field(factory=trio.Event)
    answer: MigrateAnswer | None = None
    exit_deadline: float = math.inf  # set when the agent stops
    started: float = field(factory=trio.current_time)
    _bounds: list[trio.CancelScope] = field(factory=list)

    @property
    def outcome(self) -> str:
        """What ended the job (agent.observe.observer.MIGRATION_OUTCOMES)."""
        if self.answer is None:
            return "unknown"  # the agent exits before the outcome was read
        if self.answer.result:
            return "completed"
        if self.abort_reason is not None:
            return "aborted"
        return "timed_out" if self.monitor.timed_out else "failed"

    @property
    def details(self) -> str | None:
        return self.answer.details if self.answer is not None else None

    def elapsed(self) -> float:
        return trio.current_time() - self.started

    def bounded(self, cap: float) -> trio.CancelScope:
        """A scope for one step: ``cap`` seconds, or less if a deadline is nearer. Steps end
        a little before the command's deadline, so that the answer is ready in time; once
        that has passed (the command answered without them), only the cap and the agent's
        exit bound them."""
        now = trio.current_time()
        end = now + cap
        if self.deadline - ANSWER_MARGIN > now:
            end = min(end, self.deadline - ANSWER_MARGIN)
        end = min(end, self.exit_deadline)
        scope = trio.CancelScope(deadline=end)
        self._bounds = [b for b in self._bounds if not b.cancel_called] + [scope]
        return scope

    def hurry(self, exit_deadline: float) -> None:
        """The agent stops: every step, those under way too, ends by ``exit_deadline``."""
        self.exit_deadline = min(self.exit_deadline, exit_deadline - ANSWER_MARGIN)
        for scope in self._bounds:
            scope.deadline = min(scope.deadline, self.exit_deadline)


async def watch(job: MigrationJob, cfg: AgentConfig, done: trio.Event, call: Call) -> None:
    """Poll the job until ``done``: progress, downtime steps, pause, and abortJob on
    time-out or when the agent stops (``job.abort_now``)."""
    state, mlog = job.monitor, job.log
    started = trio.current_time()
    steps = (
        [cfg.migrate_downtime * (i + 1) // DOWNTIME_STEPS for i in range(DOWNTIME_STEPS)]
        if cfg.migrate_downtime > 0
        else []
    )
    aborted = False
    abort_at = started + job.abort_after if job.abort_after is not None else math.inf
    while not done.is_set():
        # Poll twice a second, but wake at the abort time itself, not up to a poll later.
        wake = trio.current_time() + POLL_SECONDS
        with trio.move_on_at(min(wake, abort_at) if not aborted else wake):
            await done.wait()
        if done.is_set():
            return
        elapsed = trio.current_time() - started
        if aborted:
            continue  # libvirt is ending the job; the call returns shortly
        if job.abort_now.is_set():
            aborted = True  # Migrations.abort_all has called abortJob itself
            continue
        if job.abort_after is not None and elapsed >= job.abort_after:
            state.timed_out = aborted = True
            mlog.warning("migration timed out, aborting", after_s=round(elapsed, 1))
            await call(job.vm, lambda d: d.abortJob())
            continue
        pause_due = 0 < cfg.migrate_pause_after <= elapsed * 1000
        if pause_due and not state.paused_by_us:
            state.paused_by_us = True
            mlog.warning(
                "pausing the VM so that the migration converges", after_ms=cfg.migrate_pause_after
            )
            await call(job.vm, lambda d: d.suspend())
        stats = await call(job.vm, lambda d: d.jobStats())
        if not stats or stats.get("type") not in ACTIVE_JOBS:
            continue
        _progress(stats, state, mlog)
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
            await call(job.vm, functools.partial(_set_max_downtime, ms=downtime))


def _set_max_downtime(dom: Any, *, ms: int) -> Any:
    return dom.migrateSetMaxDowntime(ms, 0)


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
