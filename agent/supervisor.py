"""The connection supervisor: which management server to try next, and when.

:class:`HostCycler` is the policy, a pure object driven with explicit times; the
:class:`Supervisor` runs it against the network, forever, until the agent stops.

Policy:
* a refused or unreachable MS -> the next one at once; once every MS failed, the first of
  them is tried again ``backoff`` after its failure;
* after an established session is lost -> the next MS at once, but never the same MS
  sooner than ``backoff`` (the MS needs that time to clean up after the old session);
* ``@static`` and ``@roundrobin`` walk the list in order, ``@shuffle`` walks a new random
  order every round; the first host of the configured list is the preferred one.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence

import structlog
import trio
from attrs import define, field

from agent.config import LbAlgorithm
from agent.transport import ConnectionLost, MessageStream

log = structlog.get_logger("agent.supervisor")


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
        host = min(candidates, key=lambda h: max(self._not_before.get(h, 0.0), now))
        self._pos = self._order.index(host)
        return host, max(0.0, self._not_before.get(host, 0.0) - now)

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
