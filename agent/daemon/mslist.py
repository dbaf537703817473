"""Which management servers, in what order, and when to try each.

:class:`MsList` is the list: agent.properties' ``host`` until the MS sends its own
(ReadyCommand, SetupMSListCommand, MigrateAgentConnectionCommand), which is checked entry by
entry, kept in state.dir and wins until the next reload. :class:`HostCycler` is the policy, a
pure object driven with explicit times; the supervisor (agent.daemon.supervisor) runs it
against the network.

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

import random
from collections.abc import Sequence

import structlog
from attrs import define, field

from agent.config import AgentConfig
from agent.link.state import AgentState, StateStore
from agent.mshosts import LbAlgorithm, host_entry_problem, parse_algorithm

log = structlog.get_logger("agent.mslist")

MIN_RETRY = 1.0  # seconds between two attempts at the same host, at the least


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


class MsList:
    """The MS list in force, the cycler walking it, and the MS's say in both."""

    def __init__(self, config: AgentConfig, state: StateStore) -> None:
        self.cycler = HostCycler(config.ms_hosts, config.lb_algorithm, config.backoff_seconds)
        self.lb_check_interval = config.lb_check_interval
        self._state = state
        self._backoff_override: float | None = None

    def adopt_saved(self, saved: AgentState) -> None:
        """At start: the list the MS sent last, from state.dir."""
        if not saved.ms_hosts:
            return
        hosts = valid_hosts(saved.ms_hosts, f"state file {self._state.path}")
        if not hosts:
            log.warning("no valid address in the saved list; using agent.properties' host")
            return
        algorithm = LbAlgorithm(saved.lb_algorithm) if saved.lb_algorithm else None
        self.cycler.set_hosts(hosts, algorithm)
        if saved.lb_check_interval is not None:
            self.lb_check_interval = saved.lb_check_interval

    async def adopt(
        self,
        hosts: Sequence[str],
        lb_algorithm: str | None,
        lb_check_interval: float | None,
    ) -> tuple[str, ...]:
        """A list from the MS, its fields as the command carries them; returns the entries
        kept (invalid ones are skipped; with none left the current list stays)."""
        kept = valid_hosts(hosts, "management server")
        if not kept:
            log.warning("no valid address in the management server's list; keeping the current one")
            return kept
        algorithm = parse_algorithm(lb_algorithm)
        if kept != self.cycler.hosts or (algorithm and algorithm != self.cycler.algorithm):
            log.info(
                "management server list updated",
                hosts=list(kept),
                algorithm=(algorithm or self.cycler.algorithm).value,
            )
            self.cycler.set_hosts(kept, algorithm)
        if lb_check_interval is not None:
            self.lb_check_interval = float(lb_check_interval)
        await self._state.update(
            ms_hosts=kept,
            lb_algorithm=(algorithm or self.cycler.algorithm).value,
            lb_check_interval=self.lb_check_interval,
        )
        return kept

    def set_backoff(self, seconds: float) -> None:
        """From the MS (StartupAnswer's backoff.seconds, already clamped to 1-300 s)."""
        self._backoff_override = seconds
        self.cycler.backoff = seconds

    async def apply(self, config: AgentConfig) -> None:
        """SIGHUP: agent.properties' list replaces the MS's (whose copy in state.dir goes);
        a backoff the MS set stays."""
        await self._state.update(ms_hosts=None, lb_algorithm=None, lb_check_interval=None)
        self.lb_check_interval = config.lb_check_interval
        if config.ms_hosts != self.cycler.hosts or config.lb_algorithm != self.cycler.algorithm:
            self.cycler.set_hosts(config.ms_hosts, config.lb_algorithm)
        override = self._backoff_override
        self.cycler.backoff = override if override is not None else config.backoff_seconds
