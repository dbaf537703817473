"""The base of every message: Java class name, Gson field names, secrets kept out of repr,
and the table of every message class by Java name.

A message class is a frozen attrs class whose fields are declared with :func:`jfield`, which
records the Java field name used on the wire. Python names are snake_case; wire names are
whatever the Java class declares (``_hostVmStateReport``, ``contextMap``...).

A class that sets ``JAVA_CLASS`` in its own body is entered in the table as it is defined
(``Message.__init_subclass__``); :mod:`protocol.messages` imports every module of its
package, so the codec knows a class as soon as its module exists. There is no list to edit.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
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


_CLASSES: dict[str, type[Message]] = {}


def message_class(java_class: str) -> type[Message] | None:
    """The class registered for a Java class name, or None (it decodes as UnknownMessage).
    Complete once :mod:`protocol.messages` is imported (the codec imports it)."""
    return _CLASSES.get(java_class)


def message_classes() -> Mapping[str, type[Message]]:
    """Every registered class by Java name (read-only)."""
    return MappingProxyType(_CLASSES)


def _register(cls: type[Message]) -> None:
    name = cls.__dict__["JAVA_CLASS"]
    known = _CLASSES.get(name)
    # attrs' slotted classes are built twice (the class statement, then the real class):
    # the same module and name is that rebuild, and the later class replaces the earlier.
    if known is not None and (known.__module__, known.__qualname__) != (
        cls.__module__,
        cls.__qualname__,
    ):
        raise TypeError(
            f"{cls.__module__}.{cls.__qualname__} and {known.__module__}.{known.__qualname__} "
            f"both declare JAVA_CLASS {name!r}; one Java class has one message class"
        )
    _CLASSES[name] = cls


@frozen
class Message:
    """Anything that travels as ``{"<java class>": {...}}`` in a body array."""

    JAVA_CLASS: ClassVar[str] = ""
    # Java's executeInSequence(); a request holding such a command gets IN_SEQUENCE.
    IN_SEQUENCE: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("JAVA_CLASS"):
            _register(cls)

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
