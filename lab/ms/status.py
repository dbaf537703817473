"""A host's status as the management server keeps it: CloudStack's state machine, as data.

The transitions are those of ``api/src/main/java/com/cloud/host/Status.java`` (4.21) that a
KVM host can meet; :func:`after_investigation` is what
``AgentManagerImpl.handleDisconnectWithInvestigation`` makes of an investigation. Pure: no I/O.
"""

from __future__ import annotations

import enum
from typing import Final


class Status(enum.StrEnum):
    CONNECTING = "Connecting"
    UP = "Up"
    ALERT = "Alert"
    DISCONNECTED = "Disconnected"
    DOWN = "Down"


class Event(enum.Enum):
    AGENT_CONNECTED = "AgentConnected"
    READY = "Ready"
    PING = "Ping"
    PING_TIMEOUT = "PingTimeout"
    AGENT_DISCONNECTED = "AgentDisconnected"
    SHUTDOWN_REQUESTED = "ShutdownRequested"
    HOST_DOWN = "HostDown"
    MANAGEMENT_SERVER_DOWN = "ManagementServerDown"
    WAITED_TOO_LONG = "WaitedTooLong"


_S, _E = Status, Event
TRANSITIONS: Final[dict[tuple[Status | None, Event], Status]] = {
    (None, _E.AGENT_CONNECTED): _S.CONNECTING,
    (_S.CONNECTING, _E.AGENT_CONNECTED): _S.CONNECTING,
    (_S.CONNECTING, _E.READY): _S.UP,
    (_S.CONNECTING, _E.PING_TIMEOUT): _S.ALERT,
    (_S.CONNECTING, _E.SHUTDOWN_REQUESTED): _S.DISCONNECTED,
    (_S.CONNECTING, _E.HOST_DOWN): _S.DOWN,
    (_S.CONNECTING, _E.PING): _S.CONNECTING,
    (_S.CONNECTING, _E.MANAGEMENT_SERVER_DOWN): _S.DISCONNECTED,
    (_S.CONNECTING, _E.AGENT_DISCONNECTED): _S.ALERT,
    (_S.UP, _E.PING_TIMEOUT): _S.ALERT,
    (_S.UP, _E.AGENT_DISCONNECTED): _S.ALERT,
    (_S.UP, _E.SHUTDOWN_REQUESTED): _S.DISCONNECTED,
    (_S.UP, _E.HOST_DOWN): _S.DOWN,
    (_S.UP, _E.PING): _S.UP,
    (_S.UP, _E.AGENT_CONNECTED): _S.CONNECTING,
    (_S.UP, _E.MANAGEMENT_SERVER_DOWN): _S.DISCONNECTED,
    (_S.DISCONNECTED, _E.SHUTDOWN_REQUESTED): _S.DISCONNECTED,
    (_S.DISCONNECTED, _E.PING_TIMEOUT): _S.ALERT,
    (_S.DISCONNECTED, _E.AGENT_CONNECTED): _S.CONNECTING,
    (_S.DISCONNECTED, _E.PING): _S.UP,
    (_S.DISCONNECTED, _E.HOST_DOWN): _S.DOWN,
    (_S.DISCONNECTED, _E.MANAGEMENT_SERVER_DOWN): _S.DISCONNECTED,
    (_S.DISCONNECTED, _E.WAITED_TOO_LONG): _S.ALERT,
    (_S.DISCONNECTED, _E.AGENT_DISCONNECTED): _S.DISCONNECTED,
    (_S.DOWN, _E.SHUTDOWN_REQUESTED): _S.DISCONNECTED,
    (_S.DOWN, _E.AGENT_CONNECTED): _S.CONNECTING,
    (_S.DOWN, _E.MANAGEMENT_SERVER_DOWN): _S.DOWN,
    (_S.DOWN, _E.AGENT_DISCONNECTED): _S.DOWN,
    (_S.DOWN, _E.PING_TIMEOUT): _S.DOWN,
    (_S.DOWN, _E.HOST_DOWN): _S.DOWN,
    (_S.ALERT, _E.AGENT_CONNECTED): _S.CONNECTING,
    (_S.ALERT, _E.PING): _S.UP,
    (_S.ALERT, _E.MANAGEMENT_SERVER_DOWN): _S.ALERT,
    (_S.ALERT, _E.AGENT_DISCONNECTED): _S.ALERT,
    (_S.ALERT, _E.SHUTDOWN_REQUESTED): _S.DISCONNECTED,
    (_S.ALERT, _E.HOST_DOWN): _S.DOWN,
}


def parse(text: str | None) -> Status | None:
    """A status as stored (None for a host never seen, or a status this table does not know)."""
    try:
        return Status(text) if text is not None else None
    except ValueError:
        return None


def next_status(current: Status | None, event: Event) -> Status | None:
    """The status ``event`` leads to; None when Status.java has no such transition (the
    Java MS logs a NoTransitionException and the status stays)."""
    return TRANSITIONS.get((current, event))


def after_investigation(
    current: Status | None,
    event: Event,
    determined: Status | None,
    *,
    since_last_ping: float,
    alert_wait: float,
) -> Event | None:
    """handleDisconnectWithInvestigation: the event that ends the host's disconnection,
    or None when the MS leaves the host as it is (and keeps its link, if any).

    ``determined`` is what the investigation found (CheckHealthCommand, then the HA
    investigators), None if it could not tell. Only a disconnection that would lead to
    Alert is investigated at all.
    """
    if next_status(current, event) is not Status.ALERT:
        return event
    if determined is None:
        if since_last_ping <= alert_wait:
            return None  # "state cannot be determined, do nothing"
        determined = Status.ALERT
    if determined is Status.DOWN:
        return Event.HOST_DOWN
    if determined is Status.UP:
        return Event.PING  # "Got ping response from host, bring it back"
    if determined is Status.DISCONNECTED:
        if current is Status.DISCONNECTED:
            return Event.WAITED_TOO_LONG if since_last_ping > alert_wait else None
        if current is Status.UP:
            return Event.AGENT_DISCONNECTED
    return event
