"""What a management-server class decides about an answer: the typed verdict and the cast.

Java casts succeed for the named class and its subclasses (``isinstance``); the
``Commands.getAnswer(Class)`` lookups the MS uses for StartAnswer and RebootAnswer need the
exact class (``type(answer) is cls``). An answer of a class this lab does not model
(:class:`~protocol.model.UnknownMessage`) casts to nothing, as a Java class outside the
named one's hierarchy would not.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import attrs
from attrs import frozen

from protocol.model import Answer, Message, UnknownMessage


class HostEffect(enum.Enum):
    """What happens to the host's status in the MS because of this answer."""

    NONE = "none"
    # A connect listener threw (ConnectionException with setupError, or any exception such as
    # a ClassCastException): AgentManagerImpl.notifyMonitorsOfConnection ->
    # handleDisconnectWithoutInvestigation(AgentDisconnected): Connecting -> Alert.
    ALERT = "Alert"
    # ConnectionException(setupError=false): ShutdownRequested, Connecting -> Disconnected.
    DISCONNECTED = "Disconnected"
    # An exception outside the listeners: AgentManagerImpl.handleConnectedAgent sends a
    # ReadyCommand whose details carry it (the agent must reconnect later).
    REFUSED = "refused"


@frozen
class MsVerdict:
    """``ok``: the MS got what it needs and carries on as it does for a Java agent.

    ``reason`` says what the MS does otherwise (and, when ok, what it did); ``read`` holds
    the values it took from the answer, under their Java names.
    """

    ok: bool
    reason: str
    host_effect: HostEffect = HostEffect.NONE
    read: Mapping[str, Any] = attrs.field(factory=dict)


def java_name(answer: Message) -> str:
    return answer.java_class


def class_cast(answer: Message, cls: type[Answer]) -> str:
    """Java's ClassCastException text, for a reason."""
    return f"ClassCastException: class {java_name(answer)} cannot be cast to class {cls.JAVA_CLASS}"


def result_of(answer: Message) -> bool:
    """``answer.getResult()``; an answer class this lab does not model has it in its fields
    (the MS knows the class and reads it)."""
    if isinstance(answer, UnknownMessage):
        return answer.fields.get("result") is True
    return isinstance(answer, Answer) and answer.result


def details_of(answer: Message) -> str | None:
    if isinstance(answer, UnknownMessage):
        details = answer.fields.get("details")
        return details if isinstance(details, str) else None
    return answer.details if isinstance(answer, Answer) else None


def no_answer(consequence: str, effect: HostEffect = HostEffect.NONE) -> MsVerdict:
    return MsVerdict(False, f"no answer (easySend returned null): {consequence}", effect)
