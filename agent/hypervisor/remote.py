"""Calls that reach a migration's destination host, each bounded in time.

libvirt remote URIs take no connect time-out, and a destination that accepts TCP and
never answers holds ``virConnectOpen`` forever. So:

* a read-only look (is the VM there, in what state) runs whole in a thread whose wait is
  bounded: on time-out we stop waiting and the thread finishes on its own (it changes
  nothing, and it closes its own connection when it returns). These threads get their own
  limiter, so hung ones can never starve the hypervisor's;
* a call that changes state (resume) is never abandoned: only the open before it is
  bounded that way; the call itself runs on a connection with libvirt's keepalive, which
  fails it if the destination stops answering.
"""

from __future__ import annotations

import threading
from typing import Any

import libvirt
import trio

from agent.hypervisor.connection import start_event_loop

REMOTE_TIMEOUT = 20.0  # the most any one call to the destination may take (at most 30 s)
KEEPALIVE = (5, 3)  # a destination silent for ~20 s fails the call in progress


def state_name(state: int) -> str:
    return _STATES.get(state, f"state {state}")


async def dest_state(
    uri: str, vm: str, limiter: trio.CapacityLimiter, bound: trio.CancelScope
) -> str:
    """The VM's state on the destination, or "unknown: why"; never raises, and gives up
    when ``bound`` (a cancel scope whose deadline the caller may bring forward) ends."""

    def look() -> str:
        try:
            conn = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            return f"unknown: {exc.get_error_message()}"
        try:
            return state_name(conn.lookupByName(vm).state()[0])
        except libvirt.libvirtError:
            return "not defined"
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


async def resume_paused(
    uri: str, vm: str, limiter: trio.CapacityLimiter, bound: trio.CancelScope
) -> None:
    """Resume ``vm`` on the destination if it is paused. Raises libvirtError/TimeoutError."""
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


_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutting down",
    libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
}
