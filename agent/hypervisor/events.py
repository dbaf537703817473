"""libvirt's event loop, and its domain lifecycle events in our own types.

libvirt delivers events (and keepalive, and the close callback) from its default event loop,
which must run in a thread of its own and be registered before a connection is opened. What
it reports reaches the rest of the agent as a :class:`DomainEvent`, never as libvirt's ints.
"""

from __future__ import annotations

import enum
import threading

import libvirt
from attrs import frozen


class DomainEventKind(enum.Enum):
    DEFINED = "defined"
    UNDEFINED = "undefined"
    STARTED = "started"
    SUSPENDED = "suspended"
    RESUMED = "resumed"
    STOPPED = "stopped"
    SHUTDOWN = "shutdown"
    PMSUSPENDED = "pmsuspended"
    CRASHED = "crashed"
    OTHER = "other"  # a kind this libvirt knows and we do not

    @property
    def changes_power_state(self) -> bool:
        """The VM started, stopped or crashed: the MS should hear of it before the next ping."""
        return self in (DomainEventKind.STARTED, DomainEventKind.STOPPED, DomainEventKind.CRASHED)


@frozen
class DomainEvent:
    name: str  # the domain's name
    kind: DomainEventKind


_KINDS = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: DomainEventKind.DEFINED,
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: DomainEventKind.UNDEFINED,
    libvirt.VIR_DOMAIN_EVENT_STARTED: DomainEventKind.STARTED,
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: DomainEventKind.SUSPENDED,
    libvirt.VIR_DOMAIN_EVENT_RESUMED: DomainEventKind.RESUMED,
    libvirt.VIR_DOMAIN_EVENT_STOPPED: DomainEventKind.STOPPED,
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: DomainEventKind.SHUTDOWN,
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: DomainEventKind.PMSUSPENDED,
    libvirt.VIR_DOMAIN_EVENT_CRASHED: DomainEventKind.CRASHED,
}


def lifecycle_event(name: str, event: int) -> DomainEvent:
    """libvirt's VIR_DOMAIN_EVENT_* of domain ``name`` as our event."""
    return DomainEvent(name, _KINDS.get(event, DomainEventKind.OTHER))


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
