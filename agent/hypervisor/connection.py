"""The one owner of the libvirt connection.

Every libvirt call is blocking, so each runs in a worker thread under a CapacityLimiter;
libvirt's error is read in the thread that failed and raised as HypervisorError. A failed
call changes nothing about the connection: libvirt's close callback (EOF, keepalive) marks it
lost, and ``run`` closes it and opens a new one, with backoff. Meanwhile every call fails at
once. Work that holds threads for long (a migration) takes a :class:`Lane` of its own.

A call that lasts minutes also gets a connection of its own (``own_connection``): libvirt's
client lets the thread waiting on the longest reply do the socket I/O for every thread on
that connection, and with libvirt 9.0 a call queued behind it can wait for the next
incoming message (up to a keepalive interval, 5 s) before it is even sent. A migration on
the shared connection delayed its own progress polls by a second and its abortJob by 4 s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import libvirt
import structlog
import trio
from attrs import define

from agent.hypervisor import domains
from agent.hypervisor.domains import DomainState
from agent.hypervisor.events import DomainEvent, lifecycle_event, start_event_loop
from agent.hypervisor.facts import HostFacts, read_facts
from agent.observe.observer import observer

log = structlog.get_logger("agent.hypervisor")
_T = TypeVar("_T")


class HypervisorError(Exception):
    """libvirt failed; the message is libvirt's own, read in the failing thread."""


LifecycleListener = Callable[[DomainEvent], None]
CLOSE_TIMEOUT = 0.5  # closing comes last at exit: within shutdown.grace.seconds + 5 s


@define
class _Opened:
    """A libvirt connection and what was registered on it, to undo before closing."""

    conn: Any
    close_callback: bool = False
    event_id: int | None = None

    def close(self) -> None:
        """In a worker thread. Never raises: the connection may be dead already."""
        steps: list[Callable[[], object]] = []
        if self.event_id is not None:
            event_id = self.event_id
            steps.append(lambda: self.conn.domainEventDeregisterAny(event_id))
        if self.close_callback:
            steps.append(self.conn.unregisterCloseCallback)
        steps.append(self.conn.close)
        for step in steps:
            try:
                step()
            except libvirt.libvirtError:
                pass


class Hypervisor:
    """Owns the libvirt connection: opens it, watches it, reopens it with backoff.

    ``run()`` is a task for the life of the agent. While libvirtd is away every call
    raises HypervisorError at once and ``connected`` is false; the agent stays up.
    """

    def __init__(
        self,
        uri: str,
        *,
        private_device: str = "",
        threads: int = 4,
        keepalive: tuple[int, int] = (5, 3),
        max_backoff: float = 30.0,
    ) -> None:
        self.uri = uri
        self.private_device = private_device
        self.limiter = trio.CapacityLimiter(threads)
        self.keepalive = keepalive
        self.max_backoff = max_backoff
        self.last_error: str | None = "not connected yet"
        self.last_facts: HostFacts | None = None  # for registering while libvirtd is away
        self.lifecycle_listeners: list[LifecycleListener] = []
        self.reconnects = 0
        self._conn: Any = None
        self._generation = 0  # of the connection; a late close callback names an old one
        self._lost = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def lane(self, threads: int, *, own_connection: bool = False) -> Lane:
        """Calls with ``threads`` worker threads of their own; with ``own_connection``, each
        call on a libvirt connection opened for it (for calls that last minutes)."""
        return Lane(self, trio.CapacityLimiter(threads), own_connection)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._token = trio.lowlevel.current_trio_token()
        start_event_loop()
        backoff, started = 0.5, False
        opened: _Opened | None = None
        try:
            while True:
                self._generation += 1
                try:
                    opened = await trio.to_thread.run_sync(
                        self._open, self._generation, limiter=self.limiter
                    )
                except HypervisorError as exc:
                    self.last_error = str(exc)
                    observer().libvirt(False, self.last_error)
                    log.warning(
                        "libvirt unreachable", uri=self.uri, error=str(exc), retry_in=backoff
                    )
                    if not started:
                        started = True
                        task_status.started()
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, self.max_backoff)
                    continue
                self._conn = opened.conn
                log.info("libvirt connected", uri=self.uri)
                observer().libvirt(True, None)
                backoff = 0.5
                self.last_error = None
                if self.reconnects:
                    log.info("libvirt connection restored", uri=self.uri)
                if not started:
                    started = True
                    task_status.started()
                await self._lost.wait()
                observer().libvirt(False, self.last_error)  # not in _on_closed: no agent context
                self._lost = trio.Event()
                self.reconnects += 1
                # The close callback only marked it lost: close it here, or it leaks
                # (with its event callbacks, which keep it alive).
                self._conn = None
                stale, opened = opened, None
                await self._close(stale)
        finally:
            self._conn = None
            if opened is not None:
                with trio.CancelScope(shield=True):
                    await self._close(opened)

    async def _close(self, opened: _Opened) -> None:
        # Bounded: closing changes nothing on any host, and a libvirtd that hangs must not
        # hold the agent's exit. The thread finishes on its own.
        with trio.move_on_after(CLOSE_TIMEOUT):
            await trio.to_thread.run_sync(opened.close, abandon_on_cancel=True)

    # --- in worker threads ----------------------------------------------------------

    def _open(self, generation: int) -> _Opened:
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            raise HypervisorError(exc.get_error_message() or str(exc)) from None
        opened = _Opened(conn)
        try:
            conn.setKeepAlive(*self.keepalive)
        except libvirt.libvirtError:
            pass  # local drivers (test://) have no keepalive; the close callback still works
        try:
            conn.registerCloseCallback(self._closed_cb, generation)
            opened.close_callback = True
        except libvirt.libvirtError:
            pass
        try:
            opened.event_id = conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle_cb, None
            )
        except libvirt.libvirtError as exc:
            # Without lifecycle events the MS would learn of VM changes only at pings;
            # treat it as a failed connect and try again (with backoff).
            opened.close()
            reason = exc.get_error_message() or str(exc)
            raise HypervisorError(f"cannot subscribe to domain events: {reason}") from None
        return opened

    # --- in libvirt's event thread: hand everything to trio ---------------------------

    def _closed_cb(self, _conn: Any, reason: int, generation: Any) -> None:
        self._to_trio(self._on_closed, generation, reason)

    def _lifecycle_cb(self, _conn: Any, dom: Any, event: int, _detail: int, _opaque: Any) -> None:
        self._to_trio(self._on_lifecycle, lifecycle_event(dom.name(), event))

    def _to_trio(self, fn: Callable[..., None], *args: Any) -> None:
        if self._token is None:
            return
        try:
            self._token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            pass

    def _on_closed(self, generation: int, reason: int) -> None:
        if generation != self._generation or self._conn is None:
            return  # a connection already replaced (its callback arrived late)
        why = _CLOSE_REASONS.get(reason, f"reason {reason}")
        self.last_error = f"connection to libvirtd closed ({why})"
        log.warning("libvirt connection lost", uri=self.uri, reason=why)
        self._conn = None  # calls fail fast from now on; run() closes it
        self._lost.set()

    def _on_lifecycle(self, event: DomainEvent) -> None:
        for listener in self.lifecycle_listeners:
            try:
                listener(event)
            except Exception:  # raised in a run_sync_soon callback, it would crash trio
                log.exception("domain event listener failed", vm=event.name)

    # --- calls ----------------------------------------------------------------------

    async def call(self, fn: Callable[[Any], _T]) -> _T:
        """Run ``fn(conn)`` in a worker thread; libvirt's error is read in that thread."""
        return await self._call(fn, self.limiter)

    async def peek(self, fn: Callable[[Any], _T], *, timeout: float) -> _T:
        """A call that only reads, bounded: HypervisorError after ``timeout`` s, its thread
        left to return on its own (it changes nothing). For what must not wait on a stuck
        libvirtd: the ping."""
        with trio.move_on_after(timeout):
            return await self._call(fn, self.limiter, abandon_on_cancel=True)
        raise HypervisorError(f"libvirtd did not answer within {timeout:g}s")

    async def _call(
        self,
        fn: Callable[[Any], _T],
        limiter: trio.CapacityLimiter,
        *,
        abandon_on_cancel: bool = False,
        own_connection: bool = False,
    ) -> _T:
        conn = self._conn
        if conn is None:
            raise HypervisorError(f"libvirtd is not reachable: {self.last_error}")

        def work() -> _T:
            try:
                if not own_connection:
                    return fn(conn)
                own = libvirt.open(self.uri)
                try:
                    own.setKeepAlive(*self.keepalive)
                except libvirt.libvirtError:
                    pass  # local drivers (test://) have no keepalive
                try:
                    return fn(own)
                finally:
                    own.close()
            except libvirt.libvirtError as exc:
                raise HypervisorError(exc.get_error_message() or str(exc)) from None

        return await trio.to_thread.run_sync(
            work, limiter=limiter, abandon_on_cancel=abandon_on_cancel
        )

    async def healthy(self) -> bool:
        try:
            return await self.call(lambda c: bool(c.isAlive()))
        except HypervisorError:
            return False

    async def host_facts(self) -> HostFacts:
        """libvirt's and the OS's facts; kept as ``last_facts`` for registering while
        libvirtd is away."""
        self.last_facts = await read_facts(self.call, self.private_device)
        return self.last_facts

    async def running_domains(self) -> dict[str, DomainState]:
        """Running (or paused) domains: name -> state."""
        return await self.call(domains.active_domains)


@define
class Lane:
    """Worker threads of its own, so that long calls (a migration holds its thread for
    minutes) never starve the short ones; with ``own_connection``, a libvirt connection per
    call too (see the module's note)."""

    hypervisor: Hypervisor
    limiter: trio.CapacityLimiter
    own_connection: bool = False

    def resize(self, threads: int) -> None:
        self.limiter.total_tokens = threads

    async def call(self, fn: Callable[[Any], _T], *, abandon_on_cancel: bool = False) -> _T:
        """As ``Hypervisor.call``. ``abandon_on_cancel`` only for a caller that is never
        cancelled but when the agent exits: otherwise a thread that changes state is always
        waited for."""
        return await self.hypervisor._call(
            fn,
            self.limiter,
            abandon_on_cancel=abandon_on_cancel,
            own_connection=self.own_connection,
        )


_CLOSE_REASONS = {
    libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "error",
    libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "libvirtd went away",
    libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "keepalive timed out",
    libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT: "closed by the agent",
}
