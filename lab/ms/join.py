"""The lab MS's host join: what a 4.21 MS does once it has answered a host's startup
(``AgentManagerImpl.HandleAgentConnectTask`` and ``handleConnectedAgent``): under the host's
join lock, the discoverer's checks, the connect listeners (:mod:`lab.ms.connect`) and the
ReadyCommand, the host's status Connecting -> Up (or Alert, or refused); then the second
ReadyCommand with the management-server list.

:class:`HostJoin` is the part of :class:`~lab.ms.server.ManagementServer` that does it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import attrs
import trio
from attrs import define, field

from agent.link.transport import ConnectionLost, RequestTimeout
from lab.db import HostRecord
from lab.ms import connect
from lab.ms.connect import ConnectRecord, Failure, Step
from lab.ms.hosts import UP, HostTable
from lab.ms.link import AgentLink, Submitted
from lab.ms.status import Event
from lab.ms_side import verdict_for
from lab.ms_side.verdict import HostEffect
from protocol import Message
from protocol.messages.host import ReadyCommand, StartupRoutingCommand


@define(eq=False)
class HostJoin(HostTable):
    ms_host_list: list[str] | None = None
    lb_algorithm: str = "static"
    lb_check_interval: int = 0
    ready_timeout: float = connect.READY_WAIT  # ready.command.wait
    refuse_ready: str | None = None  # knob: the host is refused, a ReadyCommand with these _details
    connects: list[ConnectRecord] = field(factory=list)
    _join_locks: dict[str, trio.Lock] = field(factory=dict, init=False)

    async def _connect(
        self,
        link: AgentLink,
        record: HostRecord,
        startups: Sequence[Message],
        startup: StartupRoutingCommand,
        startup_at: float,
    ) -> None:
        rec = ConnectRecord(record.guid, record.id, link.accepted_at, startup_at)
        self.connects.append(rec)
        ready = ReadyCommand(
            host_id=record.id,
            host_uuid=record.uuid,
            host_name=record.name,
            dc_id=self.zone.id,
            enable_human_readable_sizes=True,
            wait=int(self.ready_timeout),
        )
        # The host join lock: a second startup of the same host waits for this one.
        async with self._join_locks.setdefault(record.guid, trio.Lock()):
            if link.ended.is_set():
                rec.outcome, rec.reason = "lost", "the connection ended before its turn"
                return
            refusal = self.refuse_ready or self._discoverer_refusal(startup, record)
            if refusal is not None:
                await self._fail(link, rec, Failure(HostEffect.REFUSED, refusal))
                return
            # AgentConnected: a host that was Up (a startup again on its link) reconnects.
            self._transit(record.id, Event.AGENT_CONNECTED)
            link.attached = True  # createAttacheForConnect
            self.liveness.connected(record.id)  # BehindOnPingListener
            failure = await connect.run_listeners(
                self, link, rec, startups, host_name=record.name
            ) or await connect.send_ready(self, link, rec, ready)
            if failure is not None:
                await self._fail(link, rec, failure)
                return
            self._transit(record.id, Event.READY)
            link.ready = True
            rec.outcome, rec.up_at = UP, trio.current_time()
            link.log.info("host is up", connect_s=round(rec.up_at - rec.accepted_at, 3))
            self._notify()
        # handleConnectedAgent, after the lock: the prepared ReadyCommand once more, with the
        # management server list when the agent's is not the MS's; the answer is not read.
        second = ReadyCommand(
            host_id=record.id,
            host_uuid=record.uuid,
            host_name=record.name,
            dc_id=self.zone.id,
            enable_human_readable_sizes=True,
            avoid_ms_host_list=[],
            lb_check_interval=self.lb_check_interval,
            arch=startup.arch,
        )
        if self.ms_host_list and not self._same_ms_list(startup.ms_host_list):
            second = attrs.evolve(
                second, ms_host_list=list(self.ms_host_list), lb_algorithm=self.lb_algorithm
            )
        rec.steps.append(Step("ReadyCommand", 0, trio.current_time() - rec.accepted_at))
        answer = await self.easy_send(link, second)
        rec.steps[-1].verdict = verdict_for(second, answer)

    def _same_ms_list(self, agent_list: str | None) -> bool:
        """IndirectAgentLBServiceImpl.compareManagementServerListAndLBAlgorithm."""
        if not agent_list:
            return False
        hosts, _, algorithm = agent_list.partition("@")
        return algorithm == self.lb_algorithm and hosts.split(",") == self.ms_host_list

    def _discoverer_refusal(self, startup: StartupRoutingCommand, record: HostRecord) -> str | None:
        if not self.zone.listeners:
            return None
        first = next((r for r in self.db.all() if r.id != record.id and r.details), None)
        cluster_os = first.details.get("Host.OS") if first is not None else None
        return connect.host_os_refusal(startup, cluster_os, first is not None)

    async def _fail(self, link: AgentLink, rec: ConnectRecord, failure: Failure) -> None:
        rec.reason = failure.reason
        if failure.effect is HostEffect.REFUSED:
            rec.outcome = "refused"
            link.log.info("host refused in ReadyCommand", reason=failure.reason)
            refusal = ReadyCommand(details=failure.reason)
            try:
                submitted = await link.stream.submit([refusal])
            except ConnectionLost:
                return
            link.nursery.start_soon(_drain, submitted)
            return
        event = Event.SHUTDOWN_REQUESTED
        if failure.effect is HostEffect.ALERT:
            event = Event.AGENT_DISCONNECTED
        assert link.host_id is not None
        await self._disconnect_link(link, event)
        after = self.db.get(link.host_id)
        rec.outcome = after.status if after is not None else None
        link.log.warning(
            "connect failed: the host is out and its connection closed; the ReadyCommand "
            "with the reason cannot be sent on the closed link",
            status=rec.outcome,
            reason=failure.reason,
        )


async def _drain(submitted: Submitted) -> None:
    """Wait for an answer nobody reads, so that it is not taken for a stray message."""
    with contextlib.suppress(ConnectionLost, RequestTimeout):
        await submitted.response(30)
