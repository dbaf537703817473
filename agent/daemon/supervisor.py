"""The connection supervisor: connect, run a session, decide where next, until the agent stops.

The MsList's HostCycler says which MS and when; a session that ends says why (lost, refused,
moved, reconnect, stop), and the cycler hears of it. While connected elsewhere than the
preferred MS, the supervisor probes the preferred one every host.lb.check.interval and moves
back to it when the agent is idle.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable

import structlog
import trio

from agent.certs.trust import TLSConfigError, client_context
from agent.daemon.mslist import MsList
from agent.daemon.sdnotify import Notifier
from agent.link.session import AgentServices, AgentSession, OutcomeKind
from agent.link.transport import ConnectionLost, MessageStream
from agent.mshosts import split_host_port
from agent.observe.observer import observer
from protocol import Session

log = structlog.get_logger("agent.supervisor")

Connector = Callable[[str], Awaitable[MessageStream]]


class Supervisor:
    def __init__(
        self,
        services: AgentServices,
        ms_list: MsList,
        notifier: Notifier,
        *,
        connector: Connector | None = None,
    ) -> None:
        self.services = services
        self.ms_list = ms_list
        self.notifier = notifier
        self.session: AgentSession | None = None
        self.current_host: str | None = None
        self.stopping = False
        self._stopped = trio.Event()
        self._connector = connector or self._connect
        self._connecting: trio.CancelScope | None = None
        self._pending: tuple[str, MessageStream] | None = None
        self._announced_ready = False
        # One request counter for the life of the process, as the Java agent keeps one.
        self._sequences = itertools.count()

    def stop(self) -> None:
        """Connect no more: a connection attempt in progress is cancelled (a stalled connect
        or handshake must not hold the stop); the session in progress ends on its own."""
        self.stopping = True
        self._stopped.set()
        if self._connecting is not None:
            self._connecting.cancel()

    async def run(self) -> None:
        cycler = self.ms_list.cycler
        while not self.stopping:
            if self._pending is not None:
                host, stream = self._pending
                self._pending = None
            else:
                host, wait = cycler.next_attempt(trio.current_time())
                if wait > 0:
                    self.notifier.status(f"waiting {wait:.1f}s before connecting to {host}")
                    log.info("backing off", seconds=round(wait, 2), next_host=host)
                    with trio.move_on_after(wait):
                        await self._stopped.wait()
                    continue
                connected: MessageStream | None = None
                with trio.CancelScope() as self._connecting:
                    try:
                        connected = await self._connector(host)
                    except ConnectionLost as exc:
                        log.warning("connect failed", host=host, error=str(exc))
                        observer().connect_failed(host, str(exc))
                        cycler.attempt_failed(host, trio.current_time())
                self._connecting = None
                if connected is None:
                    continue  # failed, or cancelled because the agent stops
                stream = connected
            if self.stopping:
                await stream.aclose()
                break
            await self._run_session(host, stream)

    async def _run_session(self, host: str, stream: MessageStream) -> None:
        cycler = self.ms_list.cycler
        cycler.connected(host)
        session = AgentSession(stream, self.services, host)
        self.session, self.current_host = session, host
        self.notifier.status(f"registering with {host}")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._announce, session, host)
            if host != cycler.preferred and self.ms_list.lb_check_interval > 0:
                nursery.start_soon(self._return_to_preferred, session)
            outcome = await session.run()
            nursery.cancel_scope.cancel()
        observer().session_down(stream.peer, outcome.kind.value, outcome.reason)
        self.session, self.current_host = None, None
        now = trio.current_time()
        if outcome.kind in (OutcomeKind.LOST, OutcomeKind.REFUSED):
            cycler.session_lost(host, now)
            self.notifier.status(f"lost {host}: {outcome.reason}")
        elif outcome.kind is OutcomeKind.MOVE and self._pending is None:
            cycler.moved()
        elif outcome.kind is OutcomeKind.RECONNECT:
            cycler.reconnect(host)

    async def _announce(self, session: AgentSession, host: str) -> None:
        await session.registered.wait()
        observer().session_up(session.stream.peer)
        if not self._announced_ready:
            self._announced_ready = True
            self.notifier.ready(f"registered with {host}")
        else:
            self.notifier.status(f"registered with {host}")

    async def _return_to_preferred(self, session: AgentSession) -> None:
        preferred = self.ms_list.cycler.preferred
        while True:
            await trio.sleep(self.ms_list.lb_check_interval)
            stream = await probe_preferred(
                self._connector, preferred, idle=lambda: self.services.tasks.in_flight == 0
            )
            if stream is not None:
                log.info("moving back to the preferred management server", host=preferred)
                self._pending = (preferred, stream)
                session.finish(OutcomeKind.MOVE, f"moving back to {preferred}")
                return

    async def _connect(self, host: str) -> MessageStream:
        cfg = self.services.config
        try:
            tls = await trio.to_thread.run_sync(
                lambda: client_context(
                    cfg.cert_dir,
                    bootstrap_insecure=cfg.bootstrap_insecure,
                    verify_hostname=cfg.verify_hostname,
                )
            )
        except TLSConfigError as exc:
            log.error("TLS configuration unusable", error=str(exc))
            raise ConnectionLost(str(exc)) from None
        if tls.insecure:
            log.warning(
                "ssl.bootstrap.insecure=true: the management server's certificate is NOT "
                "verified; provision cloud.ca.crt and turn this off",
                host=host,
            )
        name, port = split_host_port(host, cfg.port)
        self.notifier.status(f"connecting to {host}")
        host_id = self.services.state.current.host_id or -1
        return await MessageStream.connect(
            name,
            port,
            tls.context,
            Session.for_agent(agent_id=host_id, sequences=self._sequences),
            connect_timeout=cfg.connect_timeout,
            handshake_timeout=cfg.handshake_timeout,
            server_hostname=name if cfg.verify_hostname else None,
        )


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
