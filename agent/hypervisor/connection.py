"""The one owner of the libvirt connection.

Every libvirt call is blocking, so each runs in a worker thread under a dedicated
CapacityLimiter; libvirt's error is read in the thread that failed. A failed call marks
the connection lost; the next call reconnects.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import libvirt
import structlog
import trio
from attrs import define, frozen

from agent.hypervisor import hostinfo

log = structlog.get_logger("agent.hypervisor")
_T = TypeVar("_T")


# libvirt reports its version as major * 1,000,000 + minor * 1,000 + release.
def _version(number: int) -> str:
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


class HypervisorError(Exception):
    """libvirt failed; the message is libvirt's own, read in the failing thread."""


@frozen
class HostFacts:
    cpus: int
    cpu_sockets: int
    speed_mhz: int
    memory: int  # bytes, MemTotal (before host.reserved.mem.mb is set aside)
    caps: str
    hypervisor_version: str
    libvirt_version: str
    arch: str
    hostname: str
    fqdn: str
    os_name: str
    os_version: str
    kernel: str
    gateway: str | None
    iqn: str | None
    private: hostinfo.Interface | None


_event_loop_lock = threading.Lock()
_event_loop_started = False


def start_event_loop() -> None:
    """Run libvirt's default event loop in a daemon thread (once per process).

    It must be registered before a connection is opened, or that connection gets no
    events, keepalive or close callback. The thread only dispatches callbacks, which hand
    their work to trio; it holds no state worth a clean stop.
    """
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()
        # Errors reach us as exceptions; libvirt's default handler would also print them.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

        def loop() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=loop, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


LifecycleListener = Callable[[str, int, int], None]  # domain name, event, detail
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
        self._up = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None

    @property
    def connected(self) -> bool:
        return self._conn is not None

    async def wait_connected(self) -> None:
        await self._up.wait()

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
                backoff = 0.5
                self.last_error = None
                if self.reconnects:
                    log.info("libvirt connection restored", uri=self.uri)
                self._up.set()
                if not started:
                    started = True
                    task_status.started()
                await self._lost.wait()
                self._lost = trio.Event()
                self._up = trio.Event()
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

    def _lifecycle_cb(self, _conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
        self._to_trio(self._on_lifecycle, dom.name(), event, detail)

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

    def _on_lifecycle(self, name: str, event: int, detail: int) -> None:
        for listener in self.lifecycle_listeners:
            try:
                listener(name, event, detail)
            except Exception:  # raised in a run_sync_soon callback, it would crash trio
                log.exception("domain event listener failed", vm=name)

    # --- calls ----------------------------------------------------------------------

    async def call(
        self,
        fn: Callable[[Any], _T],
        *,
        limiter: trio.CapacityLimiter | None = None,
        abandon_on_cancel: bool = False,
    ) -> _T:
        """Run ``fn(conn)`` in a worker thread; libvirt's error is read in that thread.

        ``abandon_on_cancel`` only for a caller that is never cancelled but when the agent
        exits: otherwise a thread that changes state is always waited for."""
        conn = self._conn
        if conn is None:
            raise HypervisorError(f"libvirtd is not reachable: {self.last_error}")

        def work() -> _T:
            try:
                return fn(conn)
            except libvirt.libvirtError as exc:
                raise HypervisorError(exc.get_error_message() or str(exc)) from None

        return await trio.to_thread.run_sync(
            work, limiter=limiter or self.limiter, abandon_on_cancel=abandon_on_cancel
        )

    async def healthy(self) -> bool:
        try:
            return await self.call(lambda c: bool(c.isAlive()))
        except HypervisorError:
            return False

    async def host_facts(self) -> HostFacts:
        def facts(conn: Any) -> tuple[list[Any], int, int, str]:
            return conn.getInfo(), conn.getVersion(), conn.getLibVersion(), conn.getCapabilities()

        info, hv_version, lib_version, caps_xml = await self.call(facts)
        os_facts = await trio.to_thread.run_sync(hostinfo.os_facts)
        private = await trio.to_thread.run_sync(hostinfo.private_interface, self.private_device)
        # getInfo: [model, memory MiB, cpus, MHz, NUMA nodes, sockets per node, cores, threads]
        _model, _mem_mib, cpus, mhz, nodes, sockets, _cores, _threads = info[:8]
        caps = ["hvm"] if "<os_type>hvm</os_type>" in caps_xml else []
        caps.append("snapshot")
        memory = await trio.to_thread.run_sync(hostinfo.total_memory)
        self.last_facts = _facts(
            os_facts,
            private,
            cpus=int(cpus),
            cpu_sockets=int(nodes) * int(sockets),
            # As the Java agent: the nominal speed, libvirt's current one only without it;
            # the memory from the kernel (libvirt rounds it to MiB).
            speed_mhz=os_facts.cpu_mhz or int(mhz),
            memory=memory,
            caps=",".join(caps),
            hypervisor_version=_version(int(hv_version)),
            libvirt_version=_version(int(lib_version)),
        )
        return self.last_facts

    async def running_domains(self) -> dict[str, str]:
        """Running (or paused) domains: name -> libvirt state name."""

        def domains(conn: Any) -> dict[str, str]:
            out = {}
            for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                state, _reason = dom.state()
                out[dom.name()] = _STATE_NAMES.get(state, "unknown")
            return out

        return await self.call(domains)


def _facts(
    os_facts: hostinfo.OsFacts, private: hostinfo.Interface | None, **libvirt_facts: Any
) -> HostFacts:
    return HostFacts(
        arch=os_facts.arch,
        hostname=os_facts.hostname,
        fqdn=os_facts.fqdn,
        os_name=os_facts.os_name,
        os_version=os_facts.os_version,
        kernel=os_facts.kernel,
        gateway=os_facts.gateway,
        iqn=os_facts.iqn,
        private=private,
        **libvirt_facts,
    )


def os_only_facts(private_device: str = "") -> HostFacts:
    """What registration can say while libvirtd is away and no earlier facts are known."""
    os_facts = hostinfo.os_facts()
    return _facts(
        os_facts,
        hostinfo.private_interface(private_device),
        cpus=os.cpu_count() or 1,
        cpu_sockets=1,
        speed_mhz=os_facts.cpu_mhz or 0,
        memory=hostinfo.total_memory(),
        caps="hvm,snapshot",
        hypervisor_version="",
        libvirt_version="",
    )


_CLOSE_REASONS = {
    libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "error",
    libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "libvirtd went away",
    libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "keepalive timed out",
    libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT: "closed by the agent",
}

_STATE_NAMES = {
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutting-down",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
}
