"""Java types that CloudStack's Gson configuration writes in shapes of their own.

Two kinds, both read and written by :mod:`protocol.codec`:

* :class:`JavaEnum` — a Java enum written by its name. The set of names grows from one
  CloudStack version to the next (storage pool types, cache modes, broadcast domain types),
  so a name this agent does not list is **kept**, not refused: it reads as an unlisted member
  that compares equal by name, is written back unchanged, and lets a handler answer "pool
  type X is not supported" instead of the whole command failing to parse. Java's Gson reads
  an unknown constant of a plain enum as null; for ``StoragePoolType`` and ``HypervisorType``
  (their own adaptors, 4.21 ``GsonHelper``) it throws. Keeping the name is the lenient choice
  that still loses nothing. Older CloudStack versions wrote these two as ``{"name": "..."}``
  objects (wire.md section 3); that shape is read too, and the plain string is always written.

* :class:`JavaInterface` — a Java interface registered with Gson's ``InterfaceTypeAdaptor``
  (``DataTO``, ``DataStoreTO``). A field *declared* with the interface type travels wrapped
  in the concrete class name, ``{"org.apache.cloudstack.storage.to.VolumeObjectTO": {...}}``;
  the same class in a field declared with its concrete type is not wrapped. An interface root
  is declared with ``root=True``; each implementation (a frozen attrs class with
  ``JAVA_CLASS``) registers itself under that name when it is defined. A wrapped class name
  no implementation claims is kept as the root's :class:`RawImplementation` subclass, not
  refused, and is written back as it came.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
from attrs import frozen


class JavaEnum(enum.Enum):
    """A Java enum constant by name (``value`` is the Java name); unlisted names are kept."""

    @classmethod
    def _missing_(cls, value: object) -> Any:
        if not isinstance(value, str):
            return None  # Enum raises ValueError: the codec turns it into a BodyError
        # Not cached in the class: hostile input must not grow it. Equality is by name.
        member = object.__new__(cls)
        member._name_ = value
        member._value_ = value
        return member

    @property
    def known(self) -> bool:
        """False for a name this agent does not list (read from a newer CloudStack)."""
        return type(self).__members__.get(self._name_) is self

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, JavaEnum) or type(other) is not type(self):
            return NotImplemented
        return bool(self._value_ == other._value_)

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._value_))


class JavaInterface:
    """Base of the Java interface types that travel as ``{"<class>": {...}}``."""

    __slots__ = ()

    JAVA_CLASS: ClassVar[str] = ""
    # Set on each interface root (root=True): Java class name -> implementation.
    IMPLEMENTATIONS: ClassVar[dict[str, type[Any]]]
    # Set on each interface root by its RawImplementation subclass.
    RAW: ClassVar[type[RawImplementation]]

    def __init_subclass__(cls, *, root: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if root:
            cls.IMPLEMENTATIONS = {}
            return
        for base in cls.__mro__[1:]:
            if "IMPLEMENTATIONS" not in base.__dict__:
                continue
            if issubclass(cls, RawImplementation):
                base.RAW = cls  # type: ignore[attr-defined]
            elif cls.JAVA_CLASS:
                # attrs re-creates a slotted class: the last definition (attrs's) wins.
                base.IMPLEMENTATIONS[cls.JAVA_CLASS] = cls  # type: ignore[attr-defined]

    @property
    def java_class(self) -> str:
        return self.JAVA_CLASS


def interface_root(tp: object) -> type[JavaInterface] | None:
    """``tp`` itself if it is an interface root (a field type to wrap), else None."""
    if isinstance(tp, type) and issubclass(tp, JavaInterface) and "IMPLEMENTATIONS" in vars(tp):
        return tp
    return None


@frozen
class RawImplementation:
    """An implementation of an interface this agent does not model, kept as it came.

    Subclass it once per interface root, together with the root (``class
    UnknownDataTO(RawImplementation, DataTO)``); the codec builds that subclass.
    """

    name: str
    fields: Mapping[str, Any] = attrs.field(factory=dict, repr=False)

    @property
    def java_class(self) -> str:
        return self.name
