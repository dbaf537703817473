"""The base of every message: Java class name, Gson field names, secrets kept out of repr.

A message class is a frozen attrs class whose fields are declared with :func:`jfield`, which
records the Java field name used on the wire. Python names are snake_case; wire names are
whatever the Java class declares (``_hostVmStateReport``, ``contextMap``...).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Final

import attrs
from attrs import frozen

JSON_NAME: Final = "json"
ALIASES: Final = "aliases"
SECRET: Final = "secret"


def jfield(
    json_name: str,
    *,
    default: Any = attrs.NOTHING,
    factory: Any = None,
    secret: bool = False,
    aliases: tuple[str, ...] = (),
) -> Any:
    """An attrs field whose wire name is ``json_name``; ``secret`` keeps it out of repr.

    ``aliases`` are other names accepted when reading (older CloudStack versions).
    """
    metadata = {JSON_NAME: json_name, SECRET: secret, ALIASES: aliases}
    if factory is not None:
        return attrs.field(factory=factory, metadata=metadata, repr=not secret, kw_only=True)
    return attrs.field(default=default, metadata=metadata, repr=not secret, kw_only=True)


@frozen
class Message:
    """Anything that travels as ``{"<java class>": {...}}`` in a body array."""

    JAVA_CLASS: ClassVar[str] = ""
    # Java's executeInSequence(); a request holding such a command gets IN_SEQUENCE.
    IN_SEQUENCE: ClassVar[bool] = False

    @property
    def java_class(self) -> str:
        return self.JAVA_CLASS

    def executes_in_sequence(self) -> bool:
        return self.IN_SEQUENCE


@frozen
class Command(Message):
    JAVA_CLASS: ClassVar[str] = "com.cloud.agent.api.Command"

    context_map: dict[str, str] = jfield("contextMap", factory=dict)
    wait: int = jfield("wait", default=0)
    bypass_host_maintenance: bool = jfield("bypassHostMaintenance", default=False)
    external_details: dict[str, dict[str, str]] | None = jfield("externalDetails", default=None)


@frozen
class Answer(Command):
    """A plain answer; every specific answer extends it."""

    JAVA_CLASS: ClassVar[str] = "com.cloud.agent.api.Answer"

    result: bool = jfield("result", default=True)
    details: str | None = jfield("details", default=None)


@frozen
class UnsupportedAnswer(Answer):
    JAVA_CLASS: ClassVar[str] = "com.cloud.agent.api.UnsupportedAnswer"

    @classmethod
    def for_command(cls, java_class: str) -> UnsupportedAnswer:
        # The Java agent's text, two spaces included (Answer.createUnsupportedCommandAnswer).
        return cls(
            result=False,
            details=f"Unsupported command issued: {java_class}.  "
            "Are you sure you got the right type of server?",
        )


@frozen
class UnknownMessage(Message):
    """A class this agent does not model: its name and raw fields are kept as they came."""

    name: str
    fields: Mapping[str, Any] = attrs.field(factory=dict, repr=False)

    @property
    def java_class(self) -> str:
        return self.name

    @property
    def is_answer(self) -> bool:
        # Java answers are named *Answer; used only to decide how to reply to a stray one.
        return self.name.endswith("Answer")
