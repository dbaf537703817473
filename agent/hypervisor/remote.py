"""Calls that reach another host's libvirtd (a migration's destination), each bounded in time.

libvirt remote URIs take no connect time-out, and a destination that accepts TCP and
never answers holds ``virConnectOpen`` forever. So:

* a read-only look (is the VM there, in what state) runs whole in a thread whose wait is
  bounded: on time-out we stop waiting and the thread finishes on its own (it changes
  nothing, and it closes its own connection when it returns). These threads are
  :class:`RemoteHosts`' own, so hung ones can never starve the local connection's;
* a call that changes state (resume) is never abandoned: only the open before it is
  bounded that way; the call itself runs on a connection with libvirt's keepalive, which
  fails it if the destination stops answering.
"""

from __future__ import annotations

import threading
from typing import Any

import libvirt
import trio

from agent.hypervisor.connection import HypervisorError
from agent.hypervisor.domains import NOT_DEFINED, state_of
from agent.hypervisor.events import start_event_loop

REMOTE_TIMEOUT = 20.0  # the most any one call to the destination may take (at most 30 s)
KEEPALIVE = (5, 3)  # a destination silent for ~20 s fails the call in progress


class RemoteHosts:
    """Calls to other hosts, on worker threads of their own (``threads`` at once)."""

    def __init__(self, threads: int = 4) -> None:
        self.limiter = trio.CapacityLimiter(threads)

    async def domain_state(self, uri: str, vm: str, bound: trio.CancelScope) -> str:
        """The VM's state on that host, NOT_DEFINED, or "unknown: why"; never raises, and
        gives up when ``bound`` (a cancel scope whose deadline the caller may bring forward)
        ends."""
        return await _domain_state(uri, vm, self.limiter, bound)

    async def resume_paused(self, uri: str, vm: str, bound: trio.CancelScope) -> None:
        """Resume ``vm`` on that host if it is paused. HypervisorError when libvirt fails
        or the host does not answer before ``bound`` ends."""
        try:
            await _resume_paused(uri, vm, self.limiter, bound)
        except libvirt.libvirtError as exc:
            raise HypervisorError(exc.get_error_message() or str(exc)) from None
        except TimeoutError as exc:
            raise HypervisorError(str(exc)) from None


async def _domain_state(
    uri: str, vm: str, limiter: trio.CapacityLimiter, bound: trio.CancelScope
) -> str:
    def look() -> str:
        try:
            conn = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            return f"unknown: {exc.get_error_message()}"
        try:
            return state_of(conn.lookupByName(vm).state()[0])
        except libvirt.libvirtError:
            return NOT_DEFINED
        finally:
            try:
                conn.close()
            except libvirt.libvirtError:
                pass

    started = trio.current_time()
    with bound:
        return await trio.to_thread.run_sync(look, limiter=limiter, abandon_on_cancel=True)
    waited = trio.current_time() - started
    return f"unknown: the destination did not answer within {waited:.0f}s"


class _Opener:
    """Opens a connection in a thread that may be given up on; a connection that arrives
    after we gave up is closed, not leaked."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._lock = threading.Lock()
        self._abandoned = False
        self._conn: Any = None

    def open(self) -> Any:  # in a worker thread
        start_event_loop()  # keepalive needs libvirt's event loop running
        conn = libvirt.open(self.uri)
        try:
            conn.setKeepAlive(*KEEPALIVE)
        except libvirt.libvirtError:
            pass
        with self._lock:
            if not self._abandoned:
                self._conn = conn
                return conn
        _close(conn)
        return None

    def abandon(self) -> Any:
        """Give up; returns a connection that was opened meanwhile (to close), if any."""
        with self._lock:
            self._abandoned = True
            conn, self._conn = self._conn, None
        return conn


async def open_bounded(uri: str, limiter: trio.CapacityLimiter, bound: trio.CancelScope) -> Any:
    """A connection to ``uri`` with keepalive; TimeoutError if none before ``bound`` ends."""
    opener = _Opener(uri)
    started = trio.current_time()
    with bound:
        return await trio.to_thread.run_sync(opener.open, limiter=limiter, abandon_on_cancel=True)
    late = opener.abandon()
    if late is not None:
        await trio.to_thread.run_sync(_close, late, abandon_on_cancel=True)
    raise TimeoutError(f"{uri} did not answer within {trio.current_time() - started:.0f}s")


async def _resume_paused(
    uri: str, vm: str, limiter: trio.CapacityLimiter, bound: trio.CancelScope
) -> None:
    conn = await open_bounded(uri, limiter, bound)

    def resume() -> None:
        try:
            dom = conn.lookupByName(vm)
            if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                dom.resume()
        finally:
            _close(conn)

    await trio.to_thread.run_sync(resume)  # changes state: waited for, bounded by keepalive


def _close(conn: Any) -> None:
    try:
        conn.close()
    except libvirt.libvirtError:
        pass
