"""The connection supervisor: which management server to try next, and when.

:class:`HostCycler` is the policy, a pure object driven with explicit times; the
:class:`Supervisor` runs it against the network, forever, until the agent stops.

Policy:
* a refused or unreachable MS -> the next one at once; once every MS failed, the first of
  them is tried again ``backoff`` after its failure;
* after an established session is lost -> the next MS at once, but never the same MS
  sooner than ``backoff`` (the MS needs that time to clean up after the old session);
* ``@static`` and ``@roundrobin`` walk the list in order, ``@shuffle`` walks a new random
  order every round; the first host of the configured list is the preferred one;
* whatever happens, one host is never tried twice within ``MIN_RETRY`` seconds (moving on
  to another host stays immediate).
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable, Sequence

import structlog
import trio
from attrs import define, field

from agent.config import LbAlgorithm, host_entry_problem
from agent.transport import ConnectionLost, MessageStream

log = structlog.get_logger("agent.supervisor")

MIN_RETRY = 1.0  # seconds between two attempts at the same host, at the least
MS_BACKOFF_RANGE = (1.0, 300.0)  # what backoff.seconds from the MS is clamped to


def valid_hosts(hosts: Sequence[object], source: str) -> tuple[str, ...]:
    """The entries of an MS list that can be dialled; each other one is logged and skipped
    (one bad name must never stop the agent: it would fail at every connect)."""
    kept = []
    for entry in hosts:
        problem = host_entry_problem(entry) if isinstance(entry, str) else "not a string"
        if problem is None:
            kept.append(str(entry))
        elif entry:
            log.warning(
                "ignoring an invalid management server address",
                source=source,
                entry=repr(entry)[:100],
                problem=problem,
            )
    return tuple(kept)


def backoff_from_ms(raw: object) -> tuple[float | None, str | None]:
    """``backoff.seconds`` as StartupAnswer.params carries it -> (the seconds to use, or
    None to keep ours; a warning for the log, or None)."""
    what = f"backoff.seconds={raw!r:.40} from the management server"
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None, f"ignoring {what}: not a number"
    if not math.isfinite(value):
        return None, f"ignoring {what}: not finite"
    low, high = MS_BACKOFF_RANGE
    clamped = min(max(value, low), high)
    if clamped != value:
        return clamped, f"{what} is outside {low:g}..{high:g}s; using {clamped:g}s"
    return value, None


@define
class HostCycler:
    """Each host has a "not before" time: set to now + backoff when a connect attempt to it
    fails or its session is lost. The next host is the first allowed one in cyclic order
    from the last; when none is allowed, the one allowed soonest, after a wait."""

    hosts: tuple[str, ...]
    algorithm: LbAlgorithm
    backoff: float
    rng: random.Random = field(factory=random.Random)
    _order: list[str] = field(init=False, factory=list)
    _pos: int = field(init=False, default=0)
    _not_before: dict[str, float] = field(init=False, factory=dict)
    _last_attempt: dict[str, float] = field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        self._new_order()

    @property
    def preferred(self) -> str:
        return self.hosts[0]

    def set_hosts(self, hosts: Sequence[str], algorithm: LbAlgorithm | None = None) -> None:
        self.hosts = tuple(hosts)
        if algorithm is not None:
            self.algorithm = algorithm
        self._not_before = {h: t for h, t in self._not_before.items() if h in self.hosts}
        self._pos = 0
        self._new_order()

    def _new_order(self) -> None:
        self._order = list(self.hosts)
        if self.algorithm is LbAlgorithm.SHUFFLE:
            self.rng.shuffle(self._order)

    def next_attempt(self, now: float) -> tuple[str, float]:
        """The host to try next and how long to wait before trying it."""
        n = len(self._order)
        candidates = [self._order[(self._pos + i) % n] for i in range(n)]
        host = min(candidates, key=lambda h: max(self._allowed_at(h), now))
        self._pos = self._order.index(host)
        wait = max(0.0, self._allowed_at(host) - now)
        if wait == 0.0:
            self._last_attempt[host] = now  # the caller connects now
        return host, wait

    def _allowed_at(self, host: str) -> float:
        last = self._last_attempt.get(host)
        floor = last + MIN_RETRY if last is not None else 0.0
        return max(self._not_before.get(host, 0.0), floor)

    def attempt_failed(self, host: str, now: float) -> None:
        self._block(host, now)

    def session_lost(self, host: str, now: float) -> None:
        self._block(host, now)

    def connected(self, host: str) -> None:
        self._not_before.pop(host, None)

    def reconnect(self, host: str) -> None:
        """Connect to the same host again, at once."""
        self._not_before.pop(host, None)
        if host in self._order:
            self._pos = self._order.index(host)

    def moved(self) -> None:
        """The MS sent a new list to move to: start it from its first host, now."""
        self._pos = 0
        self._not_before.clear()

    def _block(self, host: str, now: float) -> None:
        self._not_before[host] = now + self.backoff
        if host in self._order:
            self._pos = self._order.index(host) + 1
            if self._pos >= len(self._order):
                self._pos = 0
                if self.algorithm is LbAlgorithm.SHUFFLE:
                    self._new_order()


Connector = Callable[[str], Awaitable[MessageStream]]


async def probe_preferred(
    connect: Connector, host: str, *, idle: Callable[[], bool]
) -> MessageStream | None:
    """Open a connection to the preferred MS if we are idle; None if it is not reachable."""
    if not idle():
        return None
    try:
        stream = await connect(host)
    except ConnectionLost as exc:
        log.debug("preferred management server still unreachable", host=host, error=str(exc))
        return None
    if not idle():  # a command arrived meanwhile: stay where we are
        await stream.aclose()
        return None
    return stream


async def sleep_unless(event: trio.Event, seconds: float) -> None:
    """Sleep, returning early if ``event`` is set."""
    with trio.move_on_after(seconds):
        await event.wait()
