"""The body codec: Gson-compatible JSON, gzip above a threshold, bounded decompression.

A body is a JSON array of single-key objects, ``[{"<java class>": {fields}}, ...]``.
Output follows Gson: Java field names verbatim, subclass fields before superclass fields,
nulls omitted, HTML-safe escapes. Input is tolerant of field order and unknown fields,
and strict about types: a wrong type raises :class:`BodyError` naming the field.
"""

from __future__ import annotations

import enum
import json
import re
import types
import typing
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, Final, TypeVar, Union

import attrs

import protocol.messages  # noqa: F401  (imports every message module: the classes register)
from protocol.errors import BodyError, LocalProtocolError
from protocol.jtypes import JavaEnum, RawImplementation, interface_root
from protocol.model import ALIASES, JSON_NAME, Message, UnknownMessage, message_class

GZIP_THRESHOLD: Final = 8192
DEFAULT_MAX_BODY: Final = 16 * 1024 * 1024

_JAVA_LONG: Final = (-(2**63), 2**63 - 1)
_T = TypeVar("_T")

# Gson's HTML-safe writer escapes these; U+2028/9 always. Lone surrogates cannot be
# encoded as UTF-8, so they are written as escapes too (JSON allows it, Java reads it).
_ESCAPES: Final[dict[int, str]] = {
    ord("<"): "\\u003c",
    ord(">"): "\\u003e",
    ord("&"): "\\u0026",
    ord("="): "\\u003d",
    ord("'"): "\\u0027",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
    **{cp: f"\\u{cp:04x}" for cp in range(0xD800, 0xE000)},
}


# --- encoding -------------------------------------------------------------------------


def gson_dumps(value: Any) -> str:
    """JSON text as Gson writes it (compact, HTML-safe)."""
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise LocalProtocolError(f"value cannot be encoded as JSON: {exc}") from None
    # Safe on the whole text: these characters can only occur inside JSON strings.
    return text.translate(_ESCAPES)


_WIRE_FIELDS: dict[type, tuple[tuple[str, str], ...]] = {}
_DECODERS: dict[type, tuple[tuple[str, tuple[str, ...], Any], ...]] = {}


def _wire_fields(cls: type) -> tuple[tuple[str, str], ...]:
    """(attribute, json name) pairs in Gson order: each class's own fields, subclass first."""
    cached = _WIRE_FIELDS.get(cls)
    if cached is not None:
        return cached
    order: list[tuple[str, str]] = []
    for klass in cls.__mro__:
        if not attrs.has(klass):
            continue
        for f in attrs.fields(klass):
            if f.inherited or JSON_NAME not in f.metadata:
                continue
            order.append((f.name, f.metadata[JSON_NAME]))
    _WIRE_FIELDS[cls] = tuple(order)
    return _WIRE_FIELDS[cls]


def to_json(value: Any) -> Any:
    """Python value -> JSON-ready structure (attrs classes become objects, enums names)."""
    if isinstance(value, UnknownMessage | RawImplementation):
        return dict(value.fields)
    if attrs.has(type(value)):
        out: dict[str, Any] = {}
        wrapped = _wrapped_fields(type(value))
        for attr_name, json_name in _wire_fields(type(value)):
            item = getattr(value, attr_name)
            if item is not None:
                out[json_name] = _wrap(item) if attr_name in wrapped else to_json(item)
        return out
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


def encode_messages(messages: Sequence[Message]) -> bytes:
    """The uncompressed UTF-8 body for ``messages``."""
    if not messages:
        raise LocalProtocolError("a body must hold at least one message")
    array = [{m.java_class: to_json(m)} for m in messages]
    raw = gson_dumps(array).encode("utf-8")
    if len(raw) > DEFAULT_MAX_BODY:
        names = ", ".join(sorted({m.java_class.rsplit(".", 1)[-1] for m in messages}))
        raise LocalProtocolError(
            f"{names}: body of {len(raw)} bytes exceeds the maximum of {DEFAULT_MAX_BODY}"
        )
    return raw


def encode_body(messages: Sequence[Message]) -> tuple[bytes, int, bool]:
    """(wire bytes, uncompressed length, compressed?) for ``messages``."""
    raw = encode_messages(messages)
    if len(raw) >= GZIP_THRESHOLD:
        # mtime=0 keeps the output reproducible; the Java reader ignores the gzip header.
        co = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        return co.compress(raw) + co.flush(), len(raw), True
    return raw, len(raw), False


# --- decoding -------------------------------------------------------------------------


def inflate(data: bytes, length: int, max_size: int = DEFAULT_MAX_BODY) -> bytes:
    """Gunzip ``data``, which must inflate to exactly ``length`` bytes; never more."""
    if length < 0:
        raise BodyError(f"negative body length {length}")
    if length > max_size:
        raise BodyError(f"declared body length {length} exceeds the maximum {max_size}")
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        # One byte of slack tells "exactly length" from "more than length".
        out = d.decompress(data, length + 1)
    except zlib.error as exc:
        raise BodyError(f"corrupt gzip body: {exc}") from None
    if len(out) > length:
        raise BodyError(f"gzip body inflates past its declared length {length}")
    if not d.eof:
        raise BodyError("truncated gzip body")
    if d.unused_data:
        raise BodyError(f"{len(d.unused_data)} bytes of trailing data after the gzip body")
    if len(out) != length:
        raise BodyError(f"gzip body inflates to {len(out)} bytes, header says {length}")
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text:.40} is out of range")
    return value


def decode_body(
    data: bytes,
    *,
    length: int,
    compressed: bool,
    max_size: int = DEFAULT_MAX_BODY,
) -> list[Message]:
    """Wire bytes of a body -> messages. Raises :class:`BodyError` on any malformed input."""
    if compressed:
        raw = inflate(data, length, max_size)
    else:
        if len(data) != length:
            raise BodyError(f"body is {len(data)} bytes, header says {length}")
        if length > max_size:
            raise BodyError(f"body length {length} exceeds the maximum {max_size}")
        raw = data
    try:
        text = raw.decode("utf-8")
        array = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except UnicodeDecodeError as exc:
        raise BodyError(f"body is not UTF-8: {exc.reason} at byte {exc.start}") from None
    except RecursionError:
        raise BodyError("body JSON is nested too deeply") from None
    except ValueError as exc:
        raise BodyError(f"body is not valid JSON: {exc}") from None
    return decode_array(array)


def decode_array(array: Any) -> list[Message]:
    if not isinstance(array, list):
        raise BodyError(f"body must be a JSON array, got {_kind(array)}")
    if not array:
        raise BodyError("body array is empty")
    messages: list[Message] = []
    for index, item in enumerate(array):
        if not isinstance(item, dict) or len(item) != 1:
            raise BodyError(f"body item {index} is not an object with exactly one class name")
        ((name, fields),) = item.items()
        if not isinstance(fields, dict):
            raise BodyError(f"body item {index} ({name}): fields must be an object")
        cls = message_class(name)
        if cls is None:
            messages.append(UnknownMessage(name=name, fields=fields))
        else:
            messages.append(from_json(cls, fields, name))
    return messages


def _decoders(cls: type) -> tuple[tuple[str, tuple[str, ...], Any], ...]:
    cached = _DECODERS.get(cls)
    if cached is None:
        hints = typing.get_type_hints(cls)
        cached = _DECODERS[cls] = tuple(
            (f.name, (f.metadata[JSON_NAME], *f.metadata.get(ALIASES, ())), hints[f.name])
            for f in attrs.fields(cls)
            if JSON_NAME in f.metadata
        )
    return cached


def from_json(cls: type[_T], obj: Mapping[str, Any], where: str) -> _T:
    """Build ``cls`` from a JSON object: unknown fields ignored, null or absent = default."""
    kwargs: dict[str, Any] = {}
    for attr_name, json_names, tp in _decoders(cls):
        for json_name in json_names:
            value = obj.get(json_name)
            if value is not None:
                kwargs[attr_name] = _convert(value, tp, f"{where}.{json_name}")
                break
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # attrs validators
        raise BodyError(f"{where}: {exc}") from None


def _kind(value: Any) -> str:
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if value is None:  # null inside a list stays null
        return value
    if tp is Any:
        return _raw(value)
    if origin in (Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(value, option, where)
            except BodyError as exc:
                errors.append(str(exc))
        raise BodyError(errors[0] if len(errors) == 1 else f"{where}: no type matches")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise BodyError(f"{where}: expected boolean, got {_kind(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if not _JAVA_LONG[0] <= value <= _JAVA_LONG[1]:
                raise BodyError(f"{where}: integer out of the 64-bit range")
            return value
        if isinstance(value, float) and value.is_integer():
            return _convert(int(value), int, where)  # Gson may write 5.0 for a long
        raise BodyError(f"{where}: expected integer, got {_kind(value)}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise BodyError(f"{where}: expected number, got {_kind(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise BodyError(f"{where}: expected string, got {_kind(value)}")
    if isinstance(tp, type) and issubclass(tp, JavaEnum):
        return _convert_java_enum(value, tp, where)
    if (root := interface_root(tp)) is not None:
        return _convert_interface(value, root, where)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise BodyError(f"{where}: {value!r:.40} is not a valid {tp.__name__}") from None
    if origin is dict:
        if not isinstance(value, dict):
            raise BodyError(f"{where}: expected object, got {_kind(value)}")
        kt, vt = typing.get_args(tp)
        # A null value reads as absent: Gson leaves such entries out when it writes them.
        return {
            _convert_key(k, kt, where): _convert(v, vt, f"{where}[{k!r:.40}]")
            for k, v in value.items()
            if v is not None
        }
    if origin is list:
        if not isinstance(value, list):
            raise BodyError(f"{where}: expected array, got {_kind(value)}")
        (it,) = typing.get_args(tp)
        return [_convert(v, it, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(tp, type) and attrs.has(tp):
        if not isinstance(value, dict):
            raise BodyError(f"{where}: expected object, got {_kind(value)}")
        return from_json(tp, value, where)
    raise TypeError(f"no JSON conversion for {tp!r} at {where}")  # a bug in a message class


# --- Gson's type adaptors (GsonHelper.setDefaultGsonConfig, 4.21) ----------------------
# Kept apart from the generic code above: interface-typed fields, enums by name (see
# protocol.jtypes) and maps with Long keys.

_WRAPPED: dict[type, frozenset[str]] = {}
_LONG_KEY: Final = re.compile(r"-?[0-9]{1,19}")


def _mentions_interface(tp: Any) -> bool:
    return interface_root(tp) is not None or any(
        _mentions_interface(a) for a in typing.get_args(tp)
    )


def _wrapped_fields(cls: type) -> frozenset[str]:
    """Attributes of ``cls`` declared with an interface type: written ``{"<class>": {...}}``."""
    cached = _WRAPPED.get(cls)
    if cached is not None:
        return cached
    hints = typing.get_type_hints(cls)
    names = set()
    for f in attrs.fields(cls):
        if JSON_NAME not in f.metadata:
            continue
        tp = hints[f.name]
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if interface_root(tp) is not None or (
            typing.get_origin(tp) in (Union, types.UnionType)
            and len(options) == 1
            and interface_root(options[0]) is not None
        ):
            names.add(f.name)
        elif _mentions_interface(tp):
            # Gson wraps by the declared element type too; nothing here needs it yet, so
            # refuse the declaration rather than write such a field unwrapped.
            raise TypeError(f"{cls.__name__}.{f.name}: interface inside {tp!r} is not supported")
    _WRAPPED[cls] = frozenset(names)
    return _WRAPPED[cls]


def _wrap(value: Any) -> Any:
    java_class = getattr(value, "java_class", "")
    if not java_class:
        raise LocalProtocolError(f"{type(value).__name__} has no Java class to wrap it in")
    return {java_class: to_json(value)}


def _convert_interface(value: Any, root: type[Any], where: str) -> Any:
    """``{"<class>": {...}}`` -> the registered implementation, or the root's raw holder."""
    if not isinstance(value, dict) or len(value) != 1:
        raise BodyError(f'{where}: expected {{"<class name>": {{...}}}}, got {_kind(value)}')
    ((name, fields),) = value.items()
    if not name:
        raise BodyError(f"{where}: the class name of the wrapped object is empty")
    if not isinstance(fields, dict):
        raise BodyError(
            f'{where}: expected {{"<class name>": {{...}}}}; {name:.80} holds {_kind(fields)}'
        )
    impl = root.IMPLEMENTATIONS.get(name)
    if impl is None:
        return root.RAW(name=name, fields=fields)
    return from_json(impl, fields, f"{where}.{name.rsplit('.', 1)[-1]}")


def _raw(value: Any) -> Any:
    """An untyped value as to_json will write it: object members that are null left out."""
    if isinstance(value, dict):
        return {k: _raw(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_raw(v) for v in value]
    return value


def _convert_java_enum(value: Any, tp: type[JavaEnum], where: str) -> JavaEnum:
    """A name, or ``{"name": "..."}`` as older versions wrote some of them."""
    if isinstance(value, dict):
        value = value.get("name")
    if not isinstance(value, str):
        raise BodyError(f"{where}: expected a {tp.__name__} name, got {_kind(value)}")
    return tp(value)


def _convert_key(key: str, tp: Any, where: str) -> Any:
    """JSON object keys are strings; Gson writes a Long key as its decimal text."""
    if tp is int:
        if not _LONG_KEY.fullmatch(key):
            raise BodyError(f"{where}: key {key!r:.40} is not an integer")
        number = int(key)
        if not _JAVA_LONG[0] <= number <= _JAVA_LONG[1]:
            raise BodyError(f"{where}: key out of the 64-bit range")
        return number
    return key
