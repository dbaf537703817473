"""Command handlers: one module per room, each handler registered where it is written.

A command is two things side by side: its message class (``protocol/messages/<room>.py``)
and its handler here (``agent/handlers/<room>.py``)::

    @handler(CheckHealthCommand)
    async def check_health(cmd: CheckHealthCommand, ctx: HostContext) -> Message: ...

``@handler`` is typed so that mypy checks the handler takes the class it is registered for,
and that its context parameter (the room's narrow Protocol, agent.handlers.context) is
satisfied by the CommandContext the dispatcher passes. :meth:`HandlerRegistry.with_builtins`
imports every module of this package (pkgutil): a new room's module needs no edit
elsewhere. A command nobody handles is answered with UnsupportedAnswer.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeAlias, TypeVar, overload

from agent.handlers.context import CommandContext
from protocol.model import Message

C = TypeVar("C", bound=Message)
HandlerFn: TypeAlias = Callable[[C, CommandContext], Awaitable[Message]]
Handler: TypeAlias = Callable[[Any, CommandContext], Awaitable[Message]]

_registered: dict[str, Handler] = {}


def handler(message_class: type[C]) -> Callable[[HandlerFn[C]], HandlerFn[C]]:
    """Register the decorated function as the handler of ``message_class``."""

    def register(fn: HandlerFn[C]) -> HandlerFn[C]:
        name = message_class.JAVA_CLASS
        known = _registered.get(name)
        if known is not None and _where(known) != _where(fn):
            raise TypeError(
                f"{_where(fn)} and {_where(known)} both handle {name}; a command has one handler"
            )
        _registered[name] = fn
        return fn

    return register


def _where(fn: Callable[..., object]) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def _import_rooms() -> None:
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


class HandlerRegistry:
    """Java class name -> handler, as the dispatcher looks them up."""

    def __init__(self, handlers: Mapping[str, Handler] | None = None) -> None:
        self._handlers: dict[str, Handler] = dict(handlers or {})

    @classmethod
    def with_builtins(cls) -> HandlerRegistry:
        """Every handler of every room (a copy: tests add or replace handlers in theirs)."""
        _import_rooms()
        return cls(_registered)

    @overload
    def register(self, message_type: type[C], fn: HandlerFn[C]) -> None: ...

    @overload
    def register(self, message_type: str, fn: Handler) -> None: ...

    def register(self, message_type: type[Message] | str, fn: Handler) -> None:
        """Add or replace a handler (by class, or by Java name for a class not modelled)."""
        name = message_type if isinstance(message_type, str) else message_type.JAVA_CLASS
        self._handlers[name] = fn

    def get(self, java_class: str) -> Handler | None:
        return self._handlers.get(java_class)

    def __contains__(self, java_class: object) -> bool:
        return java_class in self._handlers
