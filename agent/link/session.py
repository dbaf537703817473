"""One registered session with one management server, from StartupRoutingCommand to its end.

The session owns three things: the reader (MessageStream.run), the ping loop, and the
dispatch of MS requests into the agent-wide task queue. It ends with a SessionOutcome that
tells the supervisor what to do next; it never raises for a lost connection.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import structlog
import trio
from attrs import frozen

from agent.config import AgentConfig, backoff_from_ms
from agent.ha.heartbeat import Heartbeat
from agent.handlers import HandlerRegistry
from agent.handlers.context import (
    AgentLifecycle,
    CommandContext,
    HostParamsControl,
    MsListControl,
    TlsReload,
)
from agent.hypervisor.connection import Hypervisor
from agent.hypervisor.migration.engine import Migrations
from agent.hypervisor.pools import Pools
from agent.hypervisor.stats import Statistics
from agent.hypervisor.vmstate import vm_state_report
from agent.hypervisor.volumes import Volumes
from agent.link.budget import REQUEST_OVERHEAD
from agent.link.startup import local_storage_commands, startup_command
from agent.link.state import StateStore
from agent.link.tasks import QueueClosed, TaskQueue
from agent.link.transport import ConnectionLost, MessageStream, RequestTimeout
from agent.observe.observer import observer
from protocol import LocalProtocolError, Request
from protocol.header import HEADER_SIZE
from protocol.messages.host import (
    PingAnswer,
    PingRoutingCommand,
    ReadyCommand,
    ShutdownCommand,
    StartupAnswer,
)
from protocol.model import Answer, Message, UnsupportedAnswer

STOPPED_BY_PREVIOUS_FAILURE = "Stopped by previous failure"


class OutcomeKind(enum.Enum):
    LOST = "lost"  # connection lost or MS silent: try the next MS at once
    REFUSED = "refused"  # startup or ready refused: retry this MS later
    MOVE = "move"  # the MS told us to go elsewhere: reconnect at once
    RECONNECT = "reconnect"  # same MS, new connection at once (a new certificate)
    STOP = "stop"  # shutdown (signal or MS): do not reconnect


@frozen
class SessionOutcome:
    kind: OutcomeKind
    reason: str


class SessionMsList(MsListControl, Protocol):
    def set_backoff(self, seconds: float) -> None:
        """StartupAnswer's backoff.seconds (already clamped to 1-300 s)."""
        ...


class AgentServices(Protocol):
    """What a session uses of the agent (the composition root, agent.daemon.app, has it all);
    handlers get only their room's part of it, through CommandContext."""

    @property
    def config(self) -> AgentConfig: ...

    @property
    def hypervisor(self) -> Hypervisor: ...

    @property
    def migrations(self) -> Migrations: ...

    @property
    def state(self) -> StateStore: ...

    @property
    def tasks(self) -> TaskQueue: ...

    @property
    def handlers(self) -> HandlerRegistry: ...

    @property
    def ms_list(self) -> SessionMsList: ...

    @property
    def lifecycle(self) -> AgentLifecycle: ...

    @property
    def tls_reload(self) -> TlsReload: ...

    @property
    def host_params(self) -> HostParamsControl: ...

    @property
    def stats(self) -> Statistics: ...

    @property
    def pools(self) -> Pools: ...

    @property
    def heartbeat(self) -> Heartbeat: ...

    @property
    def volumes(self) -> Volumes: ...


class AgentSession:
    def __init__(self, stream: MessageStream, services: AgentServices, host: str) -> None:
        self.stream = stream
        self.services = services
        self.host = host
        self.log = structlog.get_logger("agent.session").bind(ms=stream.peer)
        self.ping_interval = 60.0
        self.registered = trio.Event()  # StartupAnswer received
        self.is_ready = trio.Event()  # ReadyCommand accepted
        self._outcome: SessionOutcome | None = None
        # Per request: the session ends once that request's answer has been sent.
        self._pending_end: dict[int, SessionOutcome] = {}
        self._scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self._ping_now = trio.Event()
        self._no_vm_report = False  # the last ping went without a VM report
        self._startup_lock = trio.Lock()
        stream.budget = services.tasks.budget

    # --- life -----------------------------------------------------------------------

    async def run(self) -> SessionOutcome:
        with self._scope:
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._guard, self._read)
                    nursery.start_soon(self._guard, self._register_then_ping)
            finally:
                self._nursery = None
        if self._outcome is None:  # cancelled from outside: the agent is stopping
            self._outcome = SessionOutcome(OutcomeKind.STOP, "agent stopping")
        with trio.CancelScope(shield=True):
            await self.stream.aclose()
        self.log.info(
            "session ended", outcome=self._outcome.kind.value, reason=self._outcome.reason
        )
        return self._outcome

    def finish(self, kind: OutcomeKind, reason: str) -> None:
        if self._outcome is None:
            self._outcome = SessionOutcome(kind, reason)
        self._scope.cancel()

    def start_soon(self, fn: Callable[..., Awaitable[object]], *args: object) -> bool:
        """Run a task for the life of this session; False if the session is over."""
        if self._nursery is None:
            return False
        self._nursery.start_soon(fn, *args)
        return True

    # SessionControl, for handlers
    async def ready(self, command: ReadyCommand) -> None:
        if command.host_id is not None:
            self.stream.session.agent_id = command.host_id
        await self.services.state.update(
            host_id=command.host_id,
            host_uuid=command.host_uuid,
            host_name=command.host_name,
        )
        if command.ms_host_list:
            await self.services.ms_list.adopt(
                command.ms_host_list, command.lb_algorithm, command.lb_check_interval
            )
        self.log.info("host ready", host_id=command.host_id, host_uuid=command.host_uuid)
        self.is_ready.set()

    def end(self, reason: str, *, retry_same_host_later: bool, sequence: int) -> None:
        kind = OutcomeKind.REFUSED if retry_same_host_later else OutcomeKind.MOVE
        self._pending_end[sequence] = SessionOutcome(kind, reason)

    async def _guard(self, fn: object) -> None:
        try:
            await fn()  # type: ignore[operator]
        except ConnectionLost as exc:
            self.finish(OutcomeKind.LOST, str(exc))
        except Exception as exc:  # a bug must not kill the agent: log it, reconnect
            self.log.exception("session task failed")
            self.finish(OutcomeKind.LOST, f"internal error: {exc!r}")

    async def _read(self) -> None:
        await self.stream.run(self._on_request)

    # --- registration and pings -----------------------------------------------------

    async def _register_then_ping(self) -> None:
        await self.send_startup()
        await self._ping_loop()

    async def send_startup(self) -> None:
        async with self._startup_lock:
            command = await startup_command(self.services, self.log)
            # Local pools travel in the same request, as the Java agent sends them.
            local = await local_storage_commands(self.services, command, self.log)
            try:
                response = await self.stream.request(
                    [command, *local], timeout=self.services.config.startup_timeout
                )
            except RequestTimeout:
                self.finish(OutcomeKind.LOST, "no StartupAnswer in time")
                return
            answer = response.answers[0] if response.answers else None
            if not isinstance(answer, StartupAnswer) or not answer.result:
                details = getattr(answer, "details", None) or "no details"
                self.finish(OutcomeKind.REFUSED, f"startup refused: {details}")
                return
            self.ping_interval = float(max(answer.ping_interval, 1))
            # An MS that takes none of our bytes for two ping intervals is lost.
            self.stream.stall_timeout = 2 * self.ping_interval
            if "backoff.seconds" in answer.params:
                seconds, warning = backoff_from_ms(answer.params["backoff.seconds"])
                if warning is not None:
                    self.log.warning(warning)
                if seconds is not None:
                    self.services.ms_list.set_backoff(seconds)
            self.log.info(
                "registered",
                ping_interval=self.ping_interval,
                secured=command.host_details.get("secured"),
            )
            self.registered.set()

    def ping_soon(self) -> None:
        """Send an out-of-band ping now (a VM started or stopped)."""
        self._ping_now.set()

    async def _ping_loop(self) -> None:
        missed = 0
        while True:
            retries = self.services.config.ping_retries
            out_of_band = False
            with trio.move_on_after(self.ping_interval):
                await self._ping_now.wait()
                out_of_band = True
            self._ping_now = trio.Event()
            started = trio.current_time()
            ping = await self._ping_command(out_of_band)
            try:
                response = await self.stream.request(
                    [ping], stop_on_error=True, timeout=self.ping_interval
                )
            except RequestTimeout:
                missed += 1
                self.log.warning("no PingAnswer", missed=missed, allowed=retries)
                if missed >= retries:
                    self.finish(OutcomeKind.LOST, f"management server silent for {missed} pings")
                    return
                continue
            missed = 0
            answer = response.answers[0] if response.answers else None
            self.log.debug(
                "ping",
                rtt_ms=round((trio.current_time() - started) * 1000, 1),
                out_of_band=out_of_band,
            )
            if isinstance(answer, PingAnswer) and answer.send_startup:
                self.log.info("management server asked for a new startup")
                await self.send_startup()

    async def _ping_command(self, out_of_band: bool) -> PingRoutingCommand:
        # No report (not an empty one, not the last one) while libvirt cannot be asked.
        report = await vm_state_report(
            self.services.hypervisor, timeout=max(1.0, self.ping_interval / 2)
        )
        if (report is None) != self._no_vm_report:
            self._no_vm_report = report is None
            if report is None:
                self.log.warning(
                    "libvirt unreachable: pings carry no VM report until it is back",
                    error=self.services.hypervisor.last_error or "libvirtd does not answer",
                )
            else:
                self.log.info("libvirt reachable again: pings carry the VM report")
        return PingRoutingCommand(
            host_id=self.stream.session.agent_id if self.stream.session.agent_id > 0 else 0,
            out_of_band=out_of_band,
            host_vm_state_report=report,
        )

    # --- commands from the MS -------------------------------------------------------

    def _on_request(self, request: Request) -> None:
        """Called by the reader; never blocks. Commands run in the agent's task queue."""
        if refusal := _refusal(request):
            # As the Java agent (Agent.processRequest): no answer (the MS wrote this request
            # onto the link without waiting for one), no queue to wait in: disconnect, and
            # register again after the back-off.
            self.log.warning("management server refused the host", reason=refusal)
            self.finish(OutcomeKind.REFUSED, f"management server refused the host: {refusal}")
            return
        # What holding this request costs: its decoded size (the header's body length is
        # the inflated one) and the objects around it.
        size = HEADER_SIZE + request.header.length + REQUEST_OVERHEAD
        try:
            self.services.tasks.submit(
                lambda: self._execute(request), size=size, in_sequence=request.in_sequence
            )
        except QueueClosed as exc:
            answers = [
                Answer(result=False, details=f"agent cannot take commands: {exc}")
                for _ in request.commands
            ]
            self.start_soon(self._respond, request, answers)

    async def _execute(self, request: Request) -> None:
        answers: list[Message] = []
        failed = False
        for command in request.commands:
            if failed and request.stop_on_error:
                answers.append(Answer(result=False, details=STOPPED_BY_PREVIOUS_FAILURE))
                continue
            answer = await self._run_command(request.sequence, command)
            answers.append(answer)
            failed = failed or not getattr(answer, "result", True)
        await self._respond(request, answers)
        end = self._pending_end.pop(request.sequence, None)
        if end is not None:  # this request's own answer is out: now the session may end
            self.finish(end.kind, end.reason)

    async def _run_command(self, sequence: int, command: Message) -> Message:
        name = command.java_class
        log = self.log.bind(seq=sequence, command=name.rsplit(".", 1)[-1])
        started = trio.current_time()
        handler = self.services.handlers.get(name)
        if handler is None:
            answer: Message = UnsupportedAnswer.for_command(name)
        else:
            services = self.services
            # What a handler may use of the agent; its room's Protocol narrows it further.
            ctx = CommandContext(
                sequence=sequence,
                config=services.config,
                session=self,
                hypervisor=services.hypervisor,
                migrations=services.migrations,
                ms_list=services.ms_list,
                lifecycle=services.lifecycle,
                tls_reload=services.tls_reload,
                host_params=services.host_params,
                stats=services.stats,
                pools=services.pools,
                heartbeat=services.heartbeat,
                volumes=services.volumes,
            )
            try:
                answer = await handler(command, ctx)
            except Exception as exc:
                log.exception("command failed")
                answer = Answer(result=False, details=f"{type(exc).__name__}: {exc}")
        result = getattr(answer, "result", None)
        log.info(
            "command",
            result=result,
            duration_ms=round((trio.current_time() - started) * 1000, 1),
            details=getattr(answer, "details", None) if not result else None,
        )
        observer().command_done(
            name, handler is not None, bool(result), trio.current_time() - started
        )
        return answer

    async def _respond(self, request: Request, answers: Sequence[Message]) -> None:
        try:
            try:
                await self.stream.respond(request, answers)
            except LocalProtocolError as exc:
                # Our own answer has no wire form: a fault here, not the MS's. The MS still
                # gets an answer for each command, saying why.
                self.log.error(
                    "could not encode the answer; answering result=false instead",
                    seq=request.sequence,
                    error=str(exc),
                )
                details = f"the agent could not encode its answer: {exc}"[:2000]
                fallback = [Answer(result=False, details=details) for _ in request.commands]
                await self.stream.respond(request, fallback or [Answer(result=False)])
        except ConnectionLost as exc:
            self.log.warning(
                "answer lost with the connection", seq=request.sequence, error=str(exc)
            )

    async def send_shutdown(self, reason: str, detail: str) -> None:
        """Tell the MS we are going away (it then marks the host Disconnected, not Alert)."""
        try:
            await self.stream.send(
                [ShutdownCommand(reason=reason, detail=detail)], stop_on_error=True
            )
        except ConnectionLost:
            pass


def _refusal(request: Request) -> str | None:
    """The reason of a ReadyCommand carrying ``_details``: the MS refuses the host
    (AgentManagerImpl.handleConnectedAgent, after a connect listener failed)."""
    first = request.commands[0] if request.commands else None
    if isinstance(first, ReadyCommand) and first.details is not None:
        return first.details or "no reason given"
    return None
