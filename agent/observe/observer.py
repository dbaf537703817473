"""What the agent tells its observers, and how each part of the agent finds them.

The hooks are one line where the event happens (the session, the supervisor, the migration
engine, the hypervisor connection, the certificate checks)::

    observer().command_done(java_class, handled, result, seconds)

``observer()`` returns the observer of the agent whose task is asking: the composition root
installs one (:func:`install`) at the top of ``Agent.run``, and trio copies a task's context
variables into the tasks it starts and into ``trio.to_thread`` workers, so every task of
that agent finds it, and two agents in one test process stay apart. Outside an agent
(unit tests, tools) it is :data:`NOOP`. A hook must be called from an agent task or its
worker thread: callbacks that trio runs for other threads (``run_sync_soon``) run in trio's
own context and would reach NOOP.

An observer never raises into the agent and never blocks: it records and counts.
"""

from __future__ import annotations

import contextvars
import datetime as dt
from collections.abc import Sequence


class Observer:
    """Every hook, doing nothing. Values are plain: a label never carries a secret."""

    def session_up(self, host: str) -> None:
        """Registered (StartupAnswer received) with the MS at ``host`` (host:port)."""

    def session_down(self, host: str, outcome: str, reason: str) -> None:
        """The session with ``host`` ended; ``outcome``: lost, refused, move, reconnect, stop."""

    def connect_failed(self, host: str, error: str) -> None:
        """A connection attempt to ``host`` failed (TCP or TLS)."""

    def failover(self, lost: str, now: str) -> None:
        """Registered with ``now`` after the session with ``lost`` was lost."""

    def command_done(self, java_class: str, handled: bool, result: bool, seconds: float) -> None:
        """A command was answered (``handled``: the agent has a handler for its class)."""

    def migration_done(
        self, vm: str, dest: str, outcome: str, seconds: float, details: str | None
    ) -> None:
        """An outgoing migration ended: ``outcome`` is one of MIGRATION_OUTCOMES."""

    def libvirt(self, connected: bool, error: str | None) -> None:
        """The libvirt connection opened, or was lost or could not be opened (``error``)."""

    def secured(self, secured: bool, reasons: Sequence[str]) -> None:
        """The host's ``secured`` evaluation (at registration and each migration)."""

    def certificate(self, not_after: dt.datetime | None) -> None:
        """cloud.crt's notAfter (None: no readable certificate)."""


# What ended a migration job (bounded: these are metric label values).
MIGRATION_OUTCOMES = ("completed", "failed", "aborted", "timed_out", "unknown")

NOOP = Observer()
_current: contextvars.ContextVar[Observer] = contextvars.ContextVar("observer", default=NOOP)


def observer() -> Observer:
    """The observer of the agent running the calling task (NOOP outside an agent)."""
    return _current.get()


def install(obs: Observer) -> contextvars.Token[Observer]:
    """Make ``obs`` the observer of the calling task and of every task it starts from now."""
    return _current.set(obs)


def uninstall(token: contextvars.Token[Observer]) -> None:
    _current.reset(token)
