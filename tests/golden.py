"""Golden field lists: a message class against the field list of its Java class.

A golden list is written by hand from the Java source, in Gson's order (the class's own
fields, then its superclass's, each in declaration order), with the JSON type Gson writes:
``str`` (String, enums, URI), ``int`` (int/long/Integer/Long), ``float`` (double/Double),
``bool``, ``dict`` (Map, nested objects, interface-typed fields wrapped in their class name),
``list`` (List, Set, arrays, byte[]). Static and transient Java fields are not on the wire.

:func:`wire_schema` builds an instance of the Python class with **every** field set and
encodes it, so the comparison covers the declarations and what the codec really writes.
"""

from __future__ import annotations

import enum
import types
import typing
from typing import Any, Union

import attrs

from protocol.codec import decode_body, encode_messages, from_json, to_json
from protocol.jtypes import interface_root
from protocol.model import JSON_NAME, Message, message_classes

Schema = list[tuple[str, type]]

COMMAND: Schema = [  # api/src/main/java/com/cloud/agent/api/Command.java
    ("contextMap", dict),
    ("wait", int),
    ("bypassHostMaintenance", bool),
    ("externalDetails", dict),
]
ANSWER: Schema = [("result", bool), ("details", str), *COMMAND]  # .../agent/api/Answer.java


def _sample(tp: Any) -> Any:
    """A non-null value of type ``tp`` (nested objects with their defaults)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return _sample(next(a for a in typing.get_args(tp) if a is not type(None)))
    if tp is Any:
        return "raw"
    if tp is bool:
        return True
    if tp is int:
        return 7
    if tp is float:
        return 1.5
    if tp is str:
        return "s"
    if (root := interface_root(tp)) is not None:
        return next(iter(root.IMPLEMENTATIONS.values()))()
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return next(iter(tp))
    if origin is dict:
        kt, vt = typing.get_args(tp)
        return {(7 if kt is int else "k"): _sample(vt)}
    if origin is list:
        (it,) = typing.get_args(tp)
        return [_sample(it)]
    if isinstance(tp, type) and attrs.has(tp):
        return tp()
    raise TypeError(f"no sample for {tp!r}")


def full_instance(cls: type) -> Any:
    """``cls`` with every wire field set to a non-null value."""
    hints = typing.get_type_hints(cls)
    return cls(
        **{f.name: _sample(hints[f.name]) for f in attrs.fields(cls) if JSON_NAME in f.metadata}
    )


def _kind(value: Any) -> type:
    return bool if isinstance(value, bool) else type(value)


def wire_schema(cls: type) -> Schema:
    """(JSON name, JSON type) of every field, in the order the codec writes them."""
    return [(name, _kind(value)) for name, value in to_json(full_instance(cls)).items()]


def assert_golden(cls: type, java: Schema) -> None:
    ours = wire_schema(cls)
    missing = [n for n, _ in java if n not in dict(ours)]
    extra = [n for n, _ in ours if n not in dict(java)]
    assert not missing and not extra, f"{cls.__name__}: missing {missing}, not in Java {extra}"
    assert ours == java, f"{cls.__name__}: order or JSON types differ"
    # What is written with every field set reads back to the same value.
    instance = full_instance(cls)
    if isinstance(instance, Message) and message_classes().get(instance.java_class) is cls:
        raw = encode_messages([instance])
        assert decode_body(raw, length=len(raw), compressed=False) == [instance]
    else:
        assert from_json(cls, to_json(instance), cls.__name__) == instance
