"""The message classes, one module per room (host, migration, certificates, ...).

Every module of this package is imported here, so each class that sets ``JAVA_CLASS`` is
registered with the codec (``Message.__init_subclass__``) as soon as its module exists: adding
a message is adding a class to a room's module, or a new module; no list to edit.

The public classes of every module are also attributes of this package, so
``from protocol.messages import X`` works for every message. Code that mypy checks imports
from the room's module (``from protocol.messages.host import PingCommand``), which mypy sees;
the names gathered here at run time are invisible to it.
"""

from __future__ import annotations

import importlib
import pkgutil

from protocol.model import Answer, Command, Message, UnknownMessage, UnsupportedAnswer


def _import_rooms() -> list[str]:
    names = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for name, value in vars(module).items():
            public = not name.startswith("_")
            if public and isinstance(value, type) and value.__module__ == module.__name__:
                globals()[name] = value
                names.append(name)
    return names


__all__ = ["Answer", "Command", "Message", "UnknownMessage", "UnsupportedAnswer"]
__all__ += _import_rooms()
