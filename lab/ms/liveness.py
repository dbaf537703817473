"""Liveness, as a 4.21 management server judges it: pings, and the investigation of a host
that stopped pinging or whose connection dropped.

Sources (CloudStack 4.21.0.0): ``AgentManagerImpl`` (``BehindOnPingListener``: only pings
refresh the ping map; ``MonitorTask``: every ping interval, hosts whose last ping is older
than ``ping.timeout`` x ``ping.interval`` (2.5 x) are disconnected with investigation;
``handleDisconnectWithInvestigation``, ``investigate``: a CheckHealthCommand to the host,
then the HA investigators), ``KVMInvestigator.isAgentAlive`` (CheckOnHostCommand to the
suspect and its Up neighbours, only when a pool of the cluster supports HA).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Final, Protocol

import structlog
import trio
from attrs import define, field
from structlog.typing import FilteringBoundLogger

from lab.db import HostRecord
from lab.ms.status import Event, Status, after_investigation, next_status, parse
from lab.ms.zone import Zone
from lab.ms_side import ha
from lab.ms_side.verdict import result_of
from protocol.messages.ha import CheckOnHostCommand
from protocol.messages.host import CheckHealthCommand
from protocol.messages.to import HostTO, NetworkTO
from protocol.model import Command, Message

PING_TIMEOUT_FACTOR: Final = 2.5  # the global setting ping.timeout
_log: FilteringBoundLogger = structlog.get_logger("lab.ms.liveness")


class LivenessServer(Protocol):
    @property
    def zone(self) -> Zone: ...

    def record(self, host_id: int) -> HostRecord | None: ...

    def up_hosts(self) -> list[HostRecord]: ...

    def easy_send_host(self, host_id: int, command: Command) -> Awaitable[Message | None]: ...

    def disconnect_host(self, host_id: int, event: Event, link: object = None) -> Awaitable[None]:
        """handleDisconnectWithoutInvestigation: the transition, the link closed. With
        ``link`` (the connection that ended), nothing if the host is back on another."""
        ...

    def transit(self, host_id: int, event: Event, link: object = None) -> None:
        """The status transition alone (the host keeps its link)."""
        ...


@define
class Liveness:
    """The ping map and the monitor. ``alert_wait``: the global setting alert.wait (1800 s
    in a real MS): how long a host the investigators cannot judge keeps its status."""

    server: LivenessServer
    ping_interval: float
    alert_wait: float
    last_ping: dict[int, float] = field(factory=dict)  # host id -> trio time
    pings: dict[int, int] = field(factory=dict)  # host id -> pings received (for tests)
    investigations: list[tuple[int, str, Status | None, Event | None]] = field(factory=list)
    _busy: set[int] = field(factory=set)

    @property
    def timeout(self) -> float:
        return PING_TIMEOUT_FACTOR * self.ping_interval

    def connected(self, host_id: int) -> None:
        """BehindOnPingListener.processConnect: the clock starts at connect."""
        self.last_ping[host_id] = trio.current_time()

    def pinged(self, host_id: int) -> None:
        self.last_ping[host_id] = trio.current_time()
        self.pings[host_id] = self.pings.get(host_id, 0) + 1

    def removed(self, host_id: int) -> None:
        """BehindOnPingListener.processDisconnect (the MS removed the host's agent)."""
        self.last_ping.pop(host_id, None)

    def behind(self, now: float) -> list[int]:
        return [h for h, t in self.last_ping.items() if now - t > self.timeout]

    async def monitor(self) -> None:
        """MonitorTask, every ping interval."""
        async with trio.open_nursery() as nursery:
            while True:
                await trio.sleep(self.ping_interval)
                for host_id in self.behind(trio.current_time()):
                    if host_id not in self._busy:
                        self._busy.add(host_id)
                        nursery.start_soon(self._investigate_then_free, host_id, Event.PING_TIMEOUT)

    async def _investigate_then_free(self, host_id: int, event: Event) -> None:
        try:
            await self.disconnect_with_investigation(host_id, event, None)
        finally:
            self._busy.discard(host_id)

    async def disconnect_with_investigation(
        self, host_id: int, event: Event, link: object = None
    ) -> None:
        """``link``: the connection that ended (None: the host's current one)."""
        record = self.server.record(host_id)
        if record is None:
            return
        current = parse(record.status)
        log = _log.bind(host=record.guid, host_id=host_id, cause=event.value)
        determined = None
        if next_status(current, event) is Status.ALERT:
            log.info("investigating why the host disconnected", status=record.status)
            determined = await self.investigate(record)
        since = trio.current_time() - self.last_ping.get(host_id, -float("inf"))
        outcome = after_investigation(
            current, event, determined, since_last_ping=since, alert_wait=self.alert_wait
        )
        self.investigations.append((host_id, record.status, determined, outcome))
        log.info(
            "investigation done",
            determined=None if determined is None else determined.value,
            then=None if outcome is None else outcome.value,
        )
        if outcome is None:
            return
        if outcome is Event.PING:
            self.server.transit(host_id, outcome, link)  # determined Up: it keeps its link
            return
        await self.server.disconnect_host(host_id, outcome, link)

    async def investigate(self, record: HostRecord) -> Status | None:
        """AgentManagerImpl.investigate: Up if CheckHealth succeeds, else the investigators."""
        answer = await self.server.easy_send_host(record.id, CheckHealthCommand())
        if answer is not None and result_of(answer):
            return Status.UP
        return await self.kvm_investigator(record)

    async def kvm_investigator(self, record: HostRecord) -> Status | None:
        """KVMInvestigator.isAgentAlive: None when no pool supports HA (4.21: NFS only)."""
        if not self.server.zone.ha_storage:
            return None
        command = CheckOnHostCommand(
            host=HostTO(guid=record.guid, private_network=NetworkTO(ip=record.private_ip)),
            wait=CheckOnHostCommand.MS_WAIT,
        )
        own = await self.server.easy_send_host(record.id, command)
        answers: list[Message | None] = []
        for neighbour in self.server.up_hosts():
            if neighbour.id == record.id:
                continue
            answer = await self.server.easy_send_host(neighbour.id, command)
            answers.append(answer)
            if ha.check_on_host(answer).read.get("status") == ha.UP:
                break
        status = ha.investigate(own, answers).read.get("status")
        return parse(status if isinstance(status, str) else None)
