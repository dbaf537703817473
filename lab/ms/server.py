"""The lab management server: CloudStack's MS side of port 8250, in trio.

It runs a session the way a 4.21 MS does: the StartupAnswer at once, then the connect
sequence (:mod:`lab.ms.connect`) and the host's status (:mod:`lab.ms.status`), pings and
the investigation of silent hosts (:mod:`lab.ms.liveness`), the statistics cycle
(:mod:`lab.ms.stats`). The zone it runs (:mod:`lab.ms.zone`) says what the connect
listeners send; the default, :data:`~lab.ms.zone.BARE`, has no listeners (the ReadyCommands
only). Hosts are kept in SQLite (:mod:`lab.db`). Tests and the demo use the API at the end
(send commands, wait for hosts, force reconnects, migrate VMs); knobs such as ``silent`` and
``refuse_ready`` make it misbehave.
"""

from __future__ import annotations

import functools
import math
import ssl
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog
import trio
from attrs import define, field
from structlog.typing import FilteringBoundLogger

from agent.link.transport import ConnectionLost, RequestTimeout, describe
from lab.ca import LabCA
from lab.db import HostDB
from lab.ms import sshkeys
from lab.ms.errors import CommandError
from lab.ms.hosts import ALERT, CONNECTING, DISCONNECTED, UP
from lab.ms.join import HostJoin
from lab.ms.link import AgentLink, MsStream
from lab.ms.migrate import Migration, migrate
from lab.ms.stats import StatsCollector
from lab.ms.status import Event, Status
from lab.ms.zone import BARE, Zone
from protocol import Answer, Message, Request, Session, UnknownMessage
from protocol.codec import to_json
from protocol.messages.host import (
    PingAnswer,
    PingCommand,
    PingRoutingCommand,
    ShutdownCommand,
    StartupAnswer,
    StartupRoutingCommand,
)
from protocol.messages.migration import MigrateDiskInfo

_log: FilteringBoundLogger = structlog.get_logger("lab.mgmt")
SHUTDOWN_REQUESTED = "sig.kill"  # ShutdownCommand.Requested


def succeeded(answer: Message) -> bool:
    """True when an answer says result=true (also for classes the codec does not model)."""
    if isinstance(answer, Answer):
        return answer.result
    if isinstance(answer, UnknownMessage):
        return answer.fields.get("result") is True
    return False


@define(eq=False)
class ManagementServer(HostJoin):
    host: str = "127.0.0.1"
    port: int = 0
    params: dict[str, str] = field(factory=dict)
    mgmt_id: int = 0
    require_client_cert: bool = False
    handshake_timeout: float = 30  # the Java side's

    # Knobs for tests.
    silent: bool = False  # read requests, answer none of them
    request_startup_once: bool = False  # the next PingAnswer says sendStartup=true

    stats: StatsCollector = field(init=False)

    _nursery: trio.Nursery | None = field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.stats = StatsCollector(self, self.zone.stats_interval)

    @classmethod
    def create(
        cls,
        *,
        state_dir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        ping_interval: int = 60,
        params: dict[str, str] | None = None,
        mgmt_id: int | None = None,
        require_client_cert: bool = False,
        ms_host_list: list[str] | None = None,
        lb_algorithm: str = "static",
        lb_check_interval: int = 0,
        zone: Zone | None = None,
        alert_wait: float = 0,
    ) -> ManagementServer:
        state_dir.mkdir(parents=True, exist_ok=True)
        db = HostDB(state_dir / "hosts.sqlite")
        # AgentManagerImpl.configure: the hosts this MS had are Disconnected until they
        # come back (markHostsAsDisconnected).
        db.mark_all_disconnected()
        zone = zone or BARE
        if zone.listeners and zone.ssh_public_key is None:
            zone = sshkeys.with_keys(zone, state_dir / "ssh")
        return cls(
            state_dir=state_dir,
            ca=LabCA.load_or_create(state_dir / "ca"),
            db=db,
            host=host,
            port=port,
            ping_interval=ping_interval,
            params=dict(params or {}),
            # The Java MS's id is its MAC address as a number.
            mgmt_id=uuid.getnode() if mgmt_id is None else mgmt_id,
            require_client_cert=require_client_cert,
            ms_host_list=ms_host_list,
            lb_algorithm=lb_algorithm,
            lb_check_interval=lb_check_interval,
            zone=zone,
            alert_wait=alert_wait,
        )

    def close(self) -> None:
        self.db.close()

    # --- serving --------------------------------------------------------------------

    async def serve(
        self, *, task_status: trio.TaskStatus[ManagementServer] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and serve agents until cancelled; ``started`` once ``port`` is bound."""
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        if self.port == 0 and len(listeners) > 1:
            # Each address family would get its own random port; keep one.
            for extra in listeners[1:]:
                await extra.aclose()
            listeners = listeners[:1]
        self.port = listeners[0].socket.getsockname()[1]
        context = self.ca.server_context(self.require_client_cert)
        _log.info("management server listening", host=self.host, port=self.port)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self.liveness.monitor)
            if self.zone.stats_interval > 0:
                nursery.start_soon(self.stats.run)
            task_status.started(self)
            await trio.serve_listeners(functools.partial(self._serve_agent, context), listeners)

    async def _serve_agent(self, context: ssl.SSLContext, stream: trio.SocketStream) -> None:
        accepted_at = trio.current_time()
        try:
            address = stream.socket.getpeername()
            peer = f"{address[0]}:{address[1]}"
        except OSError:  # the client is already gone
            peer = "?"
        log = _log.bind(peer=peer)
        session = Session.for_management(self.mgmt_id)
        try:
            conn = await MsStream.accept(
                stream, context, session, peer=peer, handshake_timeout=self.handshake_timeout
            )
        except ConnectionLost as exc:
            log.info("agent connection refused", reason=str(exc))
            return
        assert isinstance(conn, MsStream)
        log.info("agent connected")
        send, receive = trio.open_memory_channel[Request](math.inf)
        stopping = False
        async with trio.open_nursery() as nursery:
            link = AgentLink(conn, log, send, nursery, accepted_at=accepted_at)
            nursery.start_soon(self._dispatch, link, receive)
            try:
                await conn.run(functools.partial(self._on_request, link))
            except ConnectionLost as exc:
                link.log.info("agent disconnected", reason=str(exc))
            except trio.Cancelled:
                stopping = True  # this MS is stopping
                raise
            finally:
                self._link_ended(link, stopping)
                nursery.cancel_scope.cancel()

    def _on_request(self, link: AgentLink, request: Request) -> None:
        # Called by the reader: record and queue, never block.
        first = request.commands[0]
        label = link.guid
        if isinstance(first, StartupRoutingCommand):
            label = first.guid or label
        self.received.append((label or "?", request))
        self._notify()
        try:
            link.requests.send_nowait(request)
        except trio.BrokenResourceError:
            pass  # the connection is ending

    async def _dispatch(
        self, link: AgentLink, requests: trio.MemoryReceiveChannel[Request]
    ) -> None:
        # One request at a time, in arrival order, as the Java MS's handler per link does.
        async for request in requests:
            first = request.commands[0]
            if self.silent:
                link.log.info("silent: request left unanswered", command=describe(first))
                continue
            try:
                if isinstance(first, StartupRoutingCommand):
                    await self._on_startup(link, request, first)
                elif isinstance(first, PingCommand):
                    await self._on_ping(link, request, first)
                elif isinstance(first, ShutdownCommand):
                    await self._on_shutdown(link, request, first)
                else:
                    link.log.info("request from agent", command=describe(first))
                    await link.stream.respond(request, [Answer() for _ in request.commands])
            except ConnectionLost:
                return  # the reader reports why

    async def _on_startup(
        self, link: AgentLink, request: Request, startup: StartupRoutingCommand
    ) -> None:
        if not startup.guid:
            link.log.warning("startup without a guid refused")
            refusal = StartupAnswer(result=False, details="StartupRoutingCommand has no guid")
            await link.stream.respond(request, [refusal for _ in request.commands])
            return
        guid = startup.guid
        record = self.db.upsert_startup(
            guid, startup.name or guid, startup.private_ip_address, dict(startup.host_details)
        )
        if link.guid is not None and link.guid != guid and self._links.get(link.guid) is link:
            del self._links[link.guid]
        previous = self._links.get(guid)
        if previous is not None and previous is not link:
            # The host came back on a new connection; the old one is stale (the Java MS
            # disconnects the old attache as Removed).
            previous.log.info("closing the older connection of a reconnected host")
            previous.attached = previous.ready = False
            link.nursery.start_soon(previous.stream.aclose)
        link.guid, link.host_id, link.ready = guid, record.id, False
        link.startups += 1
        link.log = _log.bind(peer=link.stream.peer, host=guid, host_id=record.id)
        self._links[guid] = link
        link.log.info(
            "host startup", name=record.name, private_ip=record.private_ip, secured=record.secured
        )
        # connectAgent: the StartupAnswer at once, before the host exists (id 0).
        answer = StartupAnswer(
            host_id=0,
            host_name=record.name,
            host_uuid=record.uuid,
            ping_interval=self.ping_interval,
            params=dict(self.params),
            result=True,
        )
        await link.stream.respond(request, [answer for _ in request.commands])
        link.stream.session.agent_id = record.id
        self._notify()
        # HandleAgentConnectTask: its own task, so that the reader keeps reading (pings).
        record_at = trio.current_time()
        link.nursery.start_soon(self._connect, link, record, request.commands, startup, record_at)

    async def _on_ping(self, link: AgentLink, request: Request, ping: PingCommand) -> None:
        report = ping.host_vm_state_report if isinstance(ping, PingRoutingCommand) else None
        if link.guid is not None and report is not None:  # none: the real MS skips the sync
            self.vm_reports[link.guid] = dict(report)
        send_startup = False
        if link.host_id is not None and link.attached:
            self.liveness.pinged(link.host_id)
            self.db.touch(link.host_id)
            record = self.db.get(link.host_id)
            gateway = not isinstance(ping, PingRoutingCommand) or ping.gateway_accessible
            send_startup = record is not None and record.status != UP and gateway
        if self.request_startup_once:
            send_startup, self.request_startup_once = True, False
        if send_startup:
            link.log.info("asking the agent to send its startup again")
        answer = PingAnswer(command=to_json(ping), send_startup=send_startup)
        await link.stream.respond(request, [answer for _ in request.commands])

    async def _on_shutdown(
        self, link: AgentLink, request: Request, shutdown: ShutdownCommand
    ) -> None:
        link.log.info("agent shutting down", reason=shutdown.reason, detail=shutdown.detail)
        link.ready = False
        # As the Java MS: no answer. ShutdownCommand.Requested ("sig.kill"):
        # disconnectWithoutInvestigation, whose attache.disconnect closes the link; other
        # reasons change nothing until the connection ends.
        if shutdown.reason == SHUTDOWN_REQUESTED and link.host_id is not None and link.attached:
            link.attached = False
            self.liveness.removed(link.host_id)
            self._transit(link.host_id, Event.SHUTDOWN_REQUESTED)
            self._notify()
            await link.stream.aclose()
            return
        self._notify()

    def _link_ended(self, link: AgentLink, stopping: bool) -> None:
        link.ready = False
        link.ended.set()
        if link.guid is not None and self._links.get(link.guid) is link:
            del self._links[link.guid]
        host_id, attached, link.attached = link.host_id, link.attached, False
        if host_id is not None and attached:
            if stopping or self._nursery is None:
                self._transit(host_id, Event.MANAGEMENT_SERVER_DOWN)
            else:  # the agent went away: investigate, as AgentHandler's DISCONNECT does
                self._nursery.start_soon(
                    self.liveness.disconnect_with_investigation, host_id,
                    Event.AGENT_DISCONNECTED, link,
                )  # fmt: skip
        self._notify()

    # --- the host's status ----------------------------------------------------------

    async def send_command(
        self,
        host: str | int,
        commands: Sequence[Message],
        *,
        stop_on_error: bool = True,
        timeout: float = 60,
    ) -> tuple[Message, ...]:
        """Send commands to a connected host (guid or id) and return its answers."""
        if not commands:
            raise ValueError("send_command needs at least one command")
        link = self._link(host)
        names = [describe(c) for c in commands]
        link.log.info("sending commands", commands=names)
        try:
            response = await link.stream.request(
                commands, stop_on_error=stop_on_error, timeout=timeout
            )
        except (RequestTimeout, ConnectionLost) as exc:
            raise CommandError(f"{', '.join(names)} to {link.guid}: {exc}") from None
        return response.answers

    async def disconnect(self, host: str | int, *, timeout: float = 5) -> None:
        """Close the host's connection, as the MS does to make an agent reconnect
        (ShutdownRequested: the host is Disconnected until it comes back)."""
        link = self._link(host)
        link.log.info("disconnecting the agent")
        if link.attached:
            await self._disconnect_link(link, Event.SHUTDOWN_REQUESTED)
        else:
            await link.stream.aclose()
        with trio.move_on_after(timeout):
            await link.ended.wait()

    async def migrate(
        self,
        vm_name: str,
        source: str,
        destination: str,
        *,
        timeout: float = 600,
        vm_to: Mapping[str, Any] | None = None,
        migrate_storage: Mapping[str, MigrateDiskInfo] | None = None,
    ) -> Migration:
        """Live-migrate ``vm_name`` in the MS's order (lab.ms.migrate): PrepareForMigration
        on the destination, Migrate on the source, then the check or the clean-up."""
        return await migrate(
            self,
            vm_name,
            source,
            destination,
            timeout=timeout,
            vm_to=vm_to,
            migrate_storage=migrate_storage,
        )


__all__ = ["ALERT", "CONNECTING", "DISCONNECTED", "UP", "ManagementServer", "Status", "succeeded"]
