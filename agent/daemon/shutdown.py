"""The ordered stop, and the last-resort timer behind it.

Stopping: no new commands; ShutdownCommand to the MS; commands and migrations get
shutdown.grace.seconds to finish; then running migrations are aborted and their outcome read
on both hosts (CLEANUP_SECONDS more), the remaining commands cancelled, and only then the
hypervisor connection closed. The process ends within shutdown.grace.seconds + EXIT_MARGIN,
whatever a thread stuck inside libvirt does.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable

import structlog
import trio

from agent.daemon.sdnotify import Notifier
from agent.hypervisor.migration.engine import Migrations
from agent.link.session import AgentSession, OutcomeKind
from agent.link.tasks import TaskQueue

EXIT_OK = 0
EXIT_STOPPED_BY_MS = 10  # the MS sent ShutdownCommand: systemd must not restart us
SHUTDOWN_NOTICE_TIMEOUT = 2.0  # for the ShutdownCommand to leave
CLEANUP_SECONDS = 4.0  # after the grace period: abort migrations, read where their VMs are
EXIT_MARGIN = 5.0  # the process ends within shutdown.grace.seconds + this, in every state

log = structlog.get_logger("agent.shutdown")


class Shutdown:
    """Whether the agent stops, why (the exit code), and by when.

    ``on_stop(tell_ms)`` is the composition root's part: closing the queue, the supervisor
    and the session; it runs once, on the first request."""

    def __init__(
        self,
        grace: Callable[[], float],
        notifier: Notifier,
        on_stop: Callable[[bool], None],
        *,
        backstop: bool = True,
    ) -> None:
        self.exit_code = EXIT_OK
        self.stopping = False
        self._grace = grace
        self._notifier = notifier
        self._on_stop = on_stop
        self._backstop_wanted = backstop
        self._backstop: threading.Timer | None = None
        self._deadline: float | None = None

    def request(self) -> None:
        """SIGTERM: no new commands, ShutdownCommand to the MS, finish in-flight work, exit."""
        if not self.stopping:
            self.exit_code = EXIT_OK
            self._begin(tell_ms=True)

    def stop_by_ms(self, reason: str) -> None:
        """The MS's ShutdownCommand: stop, and exit with a code systemd does not restart."""
        log.warning("management server told the agent to shut down", reason=reason)
        self.exit_code = EXIT_STOPPED_BY_MS
        self._begin(tell_ms=False)

    def deadline(self) -> float:
        """The end of the grace period (fixed at the first call)."""
        if self._deadline is None:
            self._deadline = trio.current_time() + self._grace()
        return self._deadline

    def _begin(self, *, tell_ms: bool) -> None:
        if self.stopping:
            return
        self.stopping = True
        grace = self.deadline() - trio.current_time()
        self._notifier.stopping()
        self._on_stop(tell_ms)
        if self._backstop_wanted:
            # Last resort for a thread stuck inside libvirt, which no cancellation reaches.
            self._backstop = threading.Timer(grace + EXIT_MARGIN, self._force_exit)
            self._backstop.daemon = True
            self._backstop.start()

    def cancel_backstop(self) -> None:
        if self._backstop is not None:
            self._backstop.cancel()

    def _force_exit(self) -> None:
        log.error(
            "the agent did not stop within shutdown.grace.seconds + 5 s; exiting now",
            exit_code=self.exit_code,
        )
        sys.stdout.flush()
        os._exit(self.exit_code)


async def end_session(
    session: AgentSession,
    tell_ms: bool,
    guid: str,
    deadline: float,
    tasks: TaskQueue,
    migrations: Migrations,
) -> None:
    """Tell the MS (on SIGTERM), let the work finish within the grace period, then end."""
    if tell_ms:
        with trio.move_on_after(SHUTDOWN_NOTICE_TIMEOUT):
            await session.send_shutdown("sig.kill", f"agent {guid} stopping on request")
    with trio.move_on_at(deadline):
        await tasks.wait_idle()
        await migrations.wait_idle()
    session.finish(OutcomeKind.STOP, "agent stopping")


async def let_work_finish(deadline: float, tasks: TaskQueue, migrations: Migrations) -> None:
    """The grace period; at its end, abort the migrations still running (each then reads its
    outcome on both hosts by the end of the clean-up)."""
    with trio.move_on_at(deadline) as scope:
        await tasks.wait_idle()
        await migrations.wait_idle()
    if scope.cancelled_caught:
        log.warning(
            "grace period over: cancelling the commands still running",
            commands=tasks.in_flight,
            migrations=migrations.running,
        )
        migrations.abort_all(
            "the agent is stopping and shutdown.grace.seconds is over",
            deadline + CLEANUP_SECONDS,
        )
