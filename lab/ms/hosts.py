"""The lab MS's table of hosts: their links and statuses, and sending to them as the MS does.

:class:`HostTable` is the part of :class:`~lab.ms.server.ManagementServer` that the connect
sequence, the liveness monitor and the statistics cycle work through (their ``*Server``
protocols): a host's status changes only by the transitions of :mod:`lab.ms.status`, and a
command goes out as ``AgentManagerImpl.easySend`` (an answer or None) or ``send`` with a
listener (written now, answered later).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import structlog
import trio
from attrs import define, field
from structlog.typing import FilteringBoundLogger

from agent.link.transport import ConnectionLost, RequestTimeout, describe
from lab.ca import LabCA
from lab.db import HostDB, HostRecord
from lab.ms.connect import PoolHostRef, Step
from lab.ms.errors import HostNotConnected
from lab.ms.link import AgentLink
from lab.ms.liveness import Liveness
from lab.ms.status import Event, next_status, parse
from lab.ms.zone import BARE, Zone
from lab.ms_side import verdict_for
from protocol import Message, Request
from protocol.messages.host import HostVmStateReportEntry, PowerState
from protocol.model import Command

_log: FilteringBoundLogger = structlog.get_logger("lab.mgmt")
_T = TypeVar("_T")

UP, CONNECTING, DISCONNECTED, ALERT = "Up", "Connecting", "Disconnected", "Alert"


@define(eq=False)
class HostTable:
    state_dir: Path
    ca: LabCA
    db: HostDB
    ping_interval: int = 60
    zone: Zone = BARE
    # The MS's global "wait" (s): the time-out of a command whose own wait is 0.
    global_wait: float = 1800
    # alert.wait: 1800 s in a real MS. The lab puts a host that nobody can judge (no
    # answer to CheckHealth, no HA storage) in Alert at once.
    alert_wait: float = 0

    received: list[tuple[str, Request]] = field(factory=list)  # (host guid or "?", request)
    vm_reports: dict[str, dict[str, HostVmStateReportEntry]] = field(factory=dict)
    pool_refs: dict[str, dict[str, PoolHostRef]] = field(factory=dict)  # pool -> guid -> ref
    tracked_volumes: dict[str, dict[str, str]] = field(factory=dict)  # pool -> path -> vm

    liveness: Liveness = field(init=False)
    _links: dict[str, AgentLink] = field(factory=dict, init=False)  # by host guid
    _changed: trio.Event = field(factory=trio.Event, init=False)

    def __attrs_post_init__(self) -> None:
        self.liveness = Liveness(self, float(self.ping_interval), self.alert_wait)

    # --- the host's status ----------------------------------------------------------

    def _transit(self, host_id: int, event: Event) -> None:
        record = self.db.get(host_id)
        if record is None:
            return
        status = next_status(parse(record.status), event)
        if status is None:
            _log.warning("no transition", host=record.guid, status=record.status, on=event.value)
            return
        self.db.set_status(host_id, status.value)
        self._notify()

    async def _disconnect_link(self, link: AgentLink, event: Event) -> None:
        """handleDisconnectWithoutInvestigation: transition, remove the agent, close."""
        assert link.host_id is not None
        link.attached = link.ready = False
        if link.guid is not None and self._links.get(link.guid) is link:
            del self._links[link.guid]  # removeAgent
        self.liveness.removed(link.host_id)
        self._transit(link.host_id, event)
        await link.stream.aclose()

    # LivenessServer
    def record(self, host_id: int) -> HostRecord | None:
        return self.db.get(host_id)

    def transit(self, host_id: int, event: Event, link: object = None) -> None:
        if link is None or self._current_link(host_id) is link:
            self._transit(host_id, event)

    async def disconnect_host(self, host_id: int, event: Event, link: object = None) -> None:
        current = self._current_link(host_id)
        if link is not None and current is not None and current is not link:
            return  # the host is back on a newer connection: this one no longer counts
        if current is not None:
            await self._disconnect_link(current, event)
        else:
            self.liveness.removed(host_id)
            self._transit(host_id, event)

    def _current_link(self, host_id: int) -> AgentLink | None:
        return next((lk for lk in self._links.values() if lk.host_id == host_id), None)

    def up_hosts(self) -> list[HostRecord]:
        return [r for r in self.db.all() if r.status == UP and self._current_link(r.id)]

    # --- sending as the MS does -----------------------------------------------------

    def now(self) -> float:
        return trio.current_time()

    async def easy_send(self, link: AgentLink, command: Command) -> Message | None:
        """AgentManagerImpl.easySend: the answer, or None (host not Up/Connecting, no
        connection, time-out). The time-out is the command's wait, else the global wait."""
        record = self.db.get(link.host_id) if link.host_id is not None else None
        if record is None or record.status not in (UP, CONNECTING) or not link.attached:
            return None
        timeout = command.wait if command.wait > 0 else self.global_wait
        try:
            response = await link.stream.request([command], stop_on_error=True, timeout=timeout)
        except (ConnectionLost, RequestTimeout) as exc:
            link.log.warning("no answer", command=describe(command), reason=str(exc))
            return None
        return response.answers[0] if response.answers else None

    async def easy_send_host(self, host_id: int, command: Command) -> Message | None:
        link = self._current_link(host_id)
        return None if link is None else await self.easy_send(link, command)

    async def send_with_listener(self, link: AgentLink, command: Command, step: Step) -> None:
        """AgentManager.send(hostId, Commands, Listener): written now, not waited for."""
        started = trio.current_time()
        try:
            submitted = await link.stream.submit([command], stop_on_error=True)
        except ConnectionLost as exc:
            step.verdict = verdict_for(command, None)
            link.log.warning("could not send", command=describe(command), reason=str(exc))
            return

        async def collect() -> None:
            timeout = command.wait if command.wait > 0 else self.global_wait
            try:
                response = await submitted.response(timeout)
                answer: Message | None = response.answers[0] if response.answers else None
            except (ConnectionLost, RequestTimeout):
                answer = None
            step.took = trio.current_time() - started
            step.verdict = verdict_for(command, answer)

        link.nursery.start_soon(collect)

    def attach_pool(self, ref: PoolHostRef) -> None:
        self.pool_refs.setdefault(ref.pool_uuid, {})[ref.guid] = ref

    # StatsServer
    def vm_names(self, guid: str) -> list[str]:
        report = self.vm_reports.get(guid, {})
        return sorted(n for n, e in report.items() if e.state is PowerState.POWER_ON)

    def pool_hosts(self, pool_uuid: str) -> list[str]:
        return sorted(self.pool_refs.get(pool_uuid, {}))

    def volumes(self, pool_uuid: str) -> dict[str, str]:
        return dict(self.tracked_volumes.get(pool_uuid, {}))

    def track_volume(self, pool_uuid: str, path: str, vm_name: str) -> None:
        """A volume of the pool the MS knows (its volumes table): the statistics cycle
        asks the host running ``vm_name`` for its sizes."""
        self.tracked_volumes.setdefault(pool_uuid, {})[path] = vm_name

    # --- waiting --------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _wait_until(self, check: Callable[[], _T | None], timeout: float, what: str) -> _T:
        with trio.move_on_after(timeout):
            while True:
                result = check()
                if result is not None:
                    return result
                await self._changed.wait()
        raise TimeoutError(f"timed out after {timeout}s waiting for {what}")

    async def wait_for_request(
        self, predicate: Callable[[str, Request], bool], timeout: float
    ) -> tuple[str, Request]:
        """The first received request (past ones included) that matches ``predicate``."""
        seen = 0

        def check() -> tuple[str, Request] | None:
            nonlocal seen
            while seen < len(self.received):
                item = self.received[seen]
                seen += 1
                if predicate(*item):
                    return item
            return None

        return await self._wait_until(check, timeout, "a matching request")

    async def wait_for_host(
        self, guid: str, *, timeout: float = 10, secured: bool | None = None
    ) -> HostRecord:
        """Wait until ``guid`` is Up on this MS (and, if given, reports that ``secured``)."""

        def check() -> HostRecord | None:
            link = self._links.get(guid)
            if link is None or not link.ready:
                return None
            record = self.db.get(guid)
            if record is None or (secured is not None and record.secured != secured):
                return None
            return record

        what = f"host {guid}" + ("" if secured is None else f" with secured={secured}")
        return await self._wait_until(check, timeout, what)

    async def wait_for_status(self, guid: str, status: str, *, timeout: float = 10) -> HostRecord:
        """Wait until the host's status in the MS's database is ``status``."""

        def check() -> HostRecord | None:
            record = self.db.get(guid)
            return record if record is not None and record.status == status else None

        return await self._wait_until(check, timeout, f"host {guid} in status {status}")

    # --- the API of tests and the demo ----------------------------------------------

    def connected(self) -> list[str]:
        """Guids of the hosts with a session (startup received) on this MS."""
        return list(self._links)

    def _link(self, host: str | int) -> AgentLink:
        if isinstance(host, str):
            link = self._links.get(host)
            if link is not None:
                return link
            if not host.isdigit():
                raise HostNotConnected(f"host {host} is not connected")
            host = int(host)
        found = self._current_link(host)
        if found is None:
            raise HostNotConnected(f"host id {host} is not connected")
        return found

    def connected_record(self, host: str | int) -> HostRecord:
        link = self._link(host)
        record = self.db.get(link.host_id) if link.host_id is not None else None
        if record is None:
            raise HostNotConnected(f"host {host} has no record")
        return record
