"""The lab management server: the agent side of CloudStack's MS on port 8250, in trio.

It runs a session the way the Java MS does (startup, immediate StartupAnswer, ReadyCommand,
pings, commands) with a SQLite host table and its own CA, and offers tests and the demo a
small API: send commands, wait for hosts, force reconnects, migrate VMs. Knobs such as
``silent`` and ``refuse_ready`` let tests make it misbehave.

Run it with ``python -m lab.mgmt serve ...`` (see :mod:`lab.control`).
"""

from __future__ import annotations

import functools
import math
import ssl
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import structlog
import trio
from attrs import define, field
from structlog.typing import FilteringBoundLogger

from agent.link.transport import ConnectionLost, MessageStream, RequestTimeout, describe
from lab.ca import LabCA
from lab.db import HostDB, HostRecord
from protocol import Answer, Message, Request, Session, UnknownMessage
from protocol.codec import to_json
from protocol.messages.host import (
    HostVmStateReportEntry,
    PingAnswer,
    PingCommand,
    PingRoutingCommand,
    ReadyCommand,
    ShutdownCommand,
    StartupAnswer,
    StartupRoutingCommand,
)
from protocol.messages.migration import MigrateCommand, PrepareForMigrationCommand

_log: FilteringBoundLogger = structlog.get_logger("lab.mgmt")
_T = TypeVar("_T")

UP = "Up"
CONNECTING = "Connecting"
DISCONNECTED = "Disconnected"


class LabError(Exception):
    """Base of the errors the lab management server raises to its callers."""


class HostNotConnected(LabError):
    """The host is unknown or has no session with this management server."""


class CommandError(LabError):
    """A command got no answer: the connection dropped or the time-out passed."""


class MigrationRefused(LabError):
    """The management server will not run this migration (e.g. secured vs unsecured host)."""


class MigrationFailed(LabError):
    """A step of the migration failed before the MigrateCommand was sent."""


@define(eq=False)
class _AgentLink:
    """One agent connection and what the session has learnt about it."""

    stream: MessageStream
    log: FilteringBoundLogger
    requests: trio.MemorySendChannel[Request]
    nursery: trio.Nursery
    guid: str | None = None
    host_id: int | None = None
    startups: int = 0  # a ReadyAnswer only counts for the latest startup
    ready: bool = False
    ended: trio.Event = field(factory=trio.Event)


def succeeded(answer: Message) -> bool:
    """True when an answer says result=true (also for classes the codec does not model)."""
    if isinstance(answer, Answer):
        return answer.result
    if isinstance(answer, UnknownMessage):
        return answer.fields.get("result") is True
    return False


@define(eq=False)
class ManagementServer:
    state_dir: Path
    ca: LabCA
    db: HostDB
    host: str = "127.0.0.1"
    port: int = 0
    ping_interval: int = 60
    params: dict[str, str] = field(factory=dict)
    mgmt_id: int = 0
    require_client_cert: bool = False
    ms_host_list: list[str] | None = None
    lb_algorithm: str = "static"
    lb_check_interval: int = 0
    handshake_timeout: float = 30  # the Java side's
    ready_timeout: float = 60

    # Knobs for tests.
    silent: bool = False  # read requests, answer none of them
    refuse_ready: str | None = None  # sent as ReadyCommand._details: the host is refused
    request_startup_once: bool = False  # the next PingAnswer says sendStartup=true

    received: list[tuple[str, Request]] = field(factory=list)  # (host guid or "?", request)
    vm_reports: dict[str, dict[str, HostVmStateReportEntry]] = field(factory=dict)

    _links: dict[str, _AgentLink] = field(factory=dict, init=False)  # by host guid
    _changed: trio.Event = field(factory=trio.Event, init=False)

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
    ) -> ManagementServer:
        state_dir.mkdir(parents=True, exist_ok=True)
        return cls(
            state_dir=state_dir,
            ca=LabCA.load_or_create(state_dir / "ca"),
            db=HostDB(state_dir / "hosts.sqlite"),
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
        task_status.started(self)
        await trio.serve_listeners(functools.partial(self._serve_agent, context), listeners)

    async def _serve_agent(self, context: ssl.SSLContext, stream: trio.SocketStream) -> None:
        try:
            address = stream.socket.getpeername()
            peer = f"{address[0]}:{address[1]}"
        except OSError:  # the client is already gone
            peer = "?"
        log = _log.bind(peer=peer)
        session = Session.for_management(self.mgmt_id)
        try:
            conn = await MessageStream.accept(
                stream, context, session, peer=peer, handshake_timeout=self.handshake_timeout
            )
        except ConnectionLost as exc:
            log.info("agent connection refused", reason=str(exc))
            return
        log.info("agent connected")
        send, receive = trio.open_memory_channel[Request](math.inf)
        async with trio.open_nursery() as nursery:
            link = _AgentLink(conn, log, send, nursery)
            nursery.start_soon(self._dispatch, link, receive)
            try:
                await conn.run(functools.partial(self._on_request, link))
            except ConnectionLost as exc:
                link.log.info("agent disconnected", reason=str(exc))
            finally:
                self._link_ended(link)
                nursery.cancel_scope.cancel()

    def _on_request(self, link: _AgentLink, request: Request) -> None:
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
        self, link: _AgentLink, requests: trio.MemoryReceiveChannel[Request]
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
        self, link: _AgentLink, request: Request, startup: StartupRoutingCommand
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
            # The host came back on a new connection; the old one is stale.
            previous.log.info("closing the older connection of a reconnected host")
            link.nursery.start_soon(previous.stream.aclose)
        link.guid, link.host_id, link.ready = guid, record.id, False
        link.startups += 1
        link.log = _log.bind(peer=link.stream.peer, host=guid, host_id=record.id)
        self._links[guid] = link
        link.log.info(
            "host startup",
            name=record.name,
            private_ip=record.private_ip,
            secured=record.secured,
        )
        answer = StartupAnswer(
            host_id=0,  # the Java MS answers before it has created the host
            host_name=record.name,
            host_uuid=record.uuid,
            ping_interval=self.ping_interval,
            params=dict(self.params),
            result=True,
        )
        await link.stream.respond(request, [answer for _ in request.commands])
        link.stream.session.agent_id = record.id
        self._notify()
        link.nursery.start_soon(self._send_ready, link, record, link.startups)

    async def _send_ready(self, link: _AgentLink, record: HostRecord, startup: int) -> None:
        # Its own task: the reader must keep reading (pings) while the agent prepares.
        ready = ReadyCommand(
            host_id=record.id,
            host_uuid=record.uuid,
            host_name=record.name,
            dc_id=1,
            ms_host_list=self.ms_host_list,
            lb_algorithm=self.lb_algorithm,
            lb_check_interval=self.lb_check_interval,
            details=self.refuse_ready,
        )
        try:
            response = await link.stream.request(
                [ready], stop_on_error=True, timeout=self.ready_timeout
            )
        except (ConnectionLost, RequestTimeout) as exc:
            link.log.warning("no ReadyAnswer", reason=str(exc))
            return
        if startup != link.startups:
            return  # the agent started up again meanwhile; a newer ReadyCommand is out
        if ready.details is not None:
            link.log.info("host refused in ReadyCommand", reason=ready.details)
            return
        if not succeeded(response.answers[0]):
            link.log.warning("agent failed the ReadyCommand")
            return
        link.ready = True
        self.db.set_status(record.id, UP)
        link.log.info("host is up")
        self._notify()

    async def _on_ping(self, link: _AgentLink, request: Request, ping: PingCommand) -> None:
        report = ping.host_vm_state_report if isinstance(ping, PingRoutingCommand) else None
        if link.guid is not None and report is not None:  # none: the real MS skips the sync
            self.vm_reports[link.guid] = dict(report)
        if link.host_id is not None:
            self.db.touch(link.host_id)
        send_startup, self.request_startup_once = self.request_startup_once, False
        if send_startup:
            link.log.info("asking the agent to send its startup again")
        answer = PingAnswer(command=to_json(ping), send_startup=send_startup)
        await link.stream.respond(request, [answer for _ in request.commands])

    async def _on_shutdown(
        self, link: _AgentLink, request: Request, shutdown: ShutdownCommand
    ) -> None:
        link.log.info("agent shutting down", reason=shutdown.reason, detail=shutdown.detail)
        await link.stream.respond(request, [Answer() for _ in request.commands])
        link.ready = False
        if link.host_id is not None:
            self.db.set_status(link.host_id, DISCONNECTED)
        self._notify()

    def _link_ended(self, link: _AgentLink) -> None:
        link.ready = False
        link.ended.set()
        if link.guid is not None and self._links.get(link.guid) is link:
            del self._links[link.guid]
            if link.host_id is not None:
                self.db.set_status(link.host_id, DISCONNECTED)
        self._notify()

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
        """Wait until ``guid`` has finished startup and ready on this MS (and, if given,
        reports that ``secured`` flag)."""

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

    # --- the API of tests and the demo ----------------------------------------------

    def connected(self) -> list[str]:
        """Guids of the hosts with a session (startup received) on this MS."""
        return list(self._links)

    def _link(self, host: str | int) -> _AgentLink:
        if isinstance(host, str):
            link = self._links.get(host)
            if link is not None:
                return link
            if not host.isdigit():
                raise HostNotConnected(f"host {host} is not connected")
            host = int(host)
        for link in self._links.values():
            if link.host_id == host:
                return link
        raise HostNotConnected(f"host id {host} is not connected")

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
        except RequestTimeout as exc:
            raise CommandError(f"{', '.join(names)} to {link.guid}: {exc}") from None
        except ConnectionLost as exc:
            raise CommandError(f"{', '.join(names)} to {link.guid}: {exc}") from None
        return response.answers

    async def disconnect(self, host: str | int, *, timeout: float = 5) -> None:
        """Close the host's connection, as the MS does to make an agent reconnect."""
        link = self._link(host)
        link.log.info("disconnecting the agent")
        await link.stream.aclose()
        with trio.move_on_after(timeout):
            await link.ended.wait()

    async def migrate(
        self, vm_name: str, source: str, destination: str, *, timeout: float = 600
    ) -> Message:
        """Live-migrate ``vm_name``: PrepareForMigration on the destination, then Migrate
        on the source; returns the source's answer."""
        src_link, dst_link = self._link(source), self._link(destination)
        assert src_link.host_id is not None and dst_link.host_id is not None
        src, dst = self.db.get(src_link.host_id), self.db.get(dst_link.host_id)
        if src is None or dst is None:
            raise HostNotConnected("a migration host has no record")
        if src.secured != dst.secured:
            raise MigrationRefused(
                f"refusing to migrate {vm_name} from {src.guid} (secured={src.secured}) to "
                f"{dst.guid} (secured={dst.secured}): secured hosts migrate only to secured hosts"
            )
        if not dst.private_ip:
            raise MigrationRefused(f"destination {dst.guid} reported no private IP address")
        _log.info("migrating", vm=vm_name, source=src.guid, destination=dst.guid)
        (prepared,) = await self.send_command(
            dst.guid, [PrepareForMigrationCommand(vm={"name": vm_name})], timeout=timeout
        )
        if not succeeded(prepared):
            details = prepared.details if isinstance(prepared, Answer) else None
            raise MigrationFailed(f"{dst.guid} could not prepare for {vm_name}: {details}")
        migrate = MigrateCommand(
            vm_name=vm_name, dest_ip=dst.private_ip, host_guid=dst.guid, wait=int(timeout)
        )
        # A little longer than the agent's own limit, so that its failure answer arrives.
        (answer,) = await self.send_command(src.guid, [migrate], timeout=timeout + 10)
        return answer


if __name__ == "__main__":
    # The command line lives in lab.control; importing it from there (not running this
    # file's classes as __main__) keeps one copy of every class and exception.
    from lab.control import main

    sys.exit(main())
