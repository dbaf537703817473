"""The observer an agent installs: it keeps the latest facts for ``kvm-agent status`` and
passes every event on to the metrics, when they are on.

It also decides what a failover is: registering with another management server after the
session with one was lost (or refused), as opposed to a move the MS asked for.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import structlog
from attrs import define, frozen

from agent.observe.observer import NOOP, Observer

log = structlog.get_logger("agent.observe")
_LOST = ("lost", "refused")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@frozen
class SessionEnd:
    host: str
    outcome: str
    reason: str
    at: dt.datetime


@frozen
class MigrationRecord:
    vm: str
    dest: str
    outcome: str
    seconds: float
    details: str | None
    ended: dt.datetime


@define
class Facts:
    """What status reports; written in the agent's trio thread, read whole by status."""

    started: dt.datetime
    host: str | None = None  # the MS registered with (host:port)
    since: dt.datetime | None = None
    last_end: SessionEnd | None = None  # the last session's end or failed connect
    failovers: int = 0
    commands: int = 0
    secured: bool | None = None  # None: not evaluated yet
    secured_reasons: tuple[str, ...] = ()
    not_after: dt.datetime | None = None
    libvirt_connected: bool = False
    libvirt_error: str | None = None
    last_migration: MigrationRecord | None = None


class Recorder(Observer):
    def __init__(self, metrics: Observer = NOOP) -> None:
        self.facts = Facts(started=_now())
        self.metrics = metrics
        self._lost: str | None = None  # the MS whose session was lost, until the next one

    def _forward(self, hook: str, *args: object) -> None:
        if self.metrics is NOOP:
            return
        try:
            getattr(self.metrics, hook)(*args)
        except Exception:  # metrics must never take a session or a migration down
            log.exception("metrics update failed", hook=hook)

    def session_up(self, host: str) -> None:
        self.facts.host, self.facts.since = host, _now()
        self._forward("session_up", host)
        if self._lost is not None and self._lost != host:
            self.failover(self._lost, host)
        self._lost = None

    def session_down(self, host: str, outcome: str, reason: str) -> None:
        if self.facts.host == host:
            self.facts.host = self.facts.since = None
            if outcome in _LOST:
                self._lost = host
        self.facts.last_end = SessionEnd(host, outcome, reason, _now())
        self._forward("session_down", host, outcome, reason)

    def connect_failed(self, host: str, error: str) -> None:
        self.facts.last_end = SessionEnd(host, "unreachable", error, _now())

    def failover(self, lost: str, now: str) -> None:
        self.facts.failovers += 1
        log.info("failed over to another management server", lost=lost, now=now)
        self._forward("failover", lost, now)

    def command_done(self, java_class: str, handled: bool, result: bool, seconds: float) -> None:
        self.facts.commands += 1
        self._forward("command_done", java_class, handled, result, seconds)

    def migration_done(
        self, vm: str, dest: str, outcome: str, seconds: float, details: str | None
    ) -> None:
        self.facts.last_migration = MigrationRecord(vm, dest, outcome, seconds, details, _now())
        self._forward("migration_done", vm, dest, outcome, seconds, details)

    def libvirt(self, connected: bool, error: str | None) -> None:
        self.facts.libvirt_connected, self.facts.libvirt_error = connected, error
        self._forward("libvirt", connected, error)

    def secured(self, secured: bool, reasons: Sequence[str]) -> None:
        self.facts.secured, self.facts.secured_reasons = secured, tuple(reasons)
        self._forward("secured", secured, reasons)

    def certificate(self, not_after: dt.datetime | None) -> None:
        self.facts.not_after = not_after
        self._forward("certificate", not_after)
