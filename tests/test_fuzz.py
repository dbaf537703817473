"""Hypothesis fuzzing of every decoder: only the protocol's own error may escape.

CI runs each test with at least 10,000 examples (the "ci" profile in conftest.py).
"""

from __future__ import annotations

import contextlib
import enum
import functools
import gzip
import json
import ssl
import struct
import types
import typing
from typing import Any, Union

import attrs
import pytest
import trustme
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from protocol.codec import decode_array, decode_body, encode_messages, from_json, to_json
from protocol.errors import BodyError, HeaderError, LinkError, ProtocolError
from protocol.header import Header
from protocol.jtypes import interface_root
from protocol.link import Link
from protocol.messages import data_to, ha, network, stats, storage, to, vm, volumes
from protocol.model import JSON_NAME, message_classes
from protocol.session import Role, Session

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
# Shallow values keep generation cheap enough for 10,000 examples per test.
json_values = (
    scalars
    | st.lists(scalars, max_size=3)
    | st.dictionaries(st.text(max_size=6), scalars | st.lists(scalars, max_size=2), max_size=3)
)
class_names = st.sampled_from(
    sorted(n for n, c in message_classes().items() if c.__module__.startswith("protocol."))
) | st.text(max_size=30)
field_names = st.sampled_from(
    [
        "hostId",
        "wait",
        "contextMap",
        "result",
        "details",
        "msList",
        "_hostVmStateReport",
        "hostDetails",
        "destinationIp",
        "vm",
        "migrateStorage",
        "params",
        "srcTO",
        "newData",
        "data",
        "poolType",
        "pool",
        "networkInfoList",
        "vmStatsMap",
    ]
) | st.text(max_size=10)
message_items = st.builds(
    lambda name, fields: {name: fields},
    class_names,
    st.dictionaries(field_names, json_values, max_size=5),
)
bodies = st.lists(message_items | json_values, max_size=3) | json_values


# The zone and VM classes, nested: keys are the JSON names those classes really use and the
# Java class names that wrap interface-typed fields, so generation reaches deep fields.
TYPED = sorted(
    {
        obj
        for module in (network, storage, stats, ha, vm, volumes, to, data_to)
        for obj in vars(module).values()
        if isinstance(obj, type) and attrs.has(obj) and obj.__module__ == module.__name__
    },
    key=lambda cls: cls.__name__,
)
TYPED_NAMES = sorted(
    {f.metadata[JSON_NAME] for cls in TYPED for f in attrs.fields(cls) if JSON_NAME in f.metadata}
    | set(data_to.DataTO.IMPLEMENTATIONS)
    | set(data_to.DataStoreTO.IMPLEMENTATIONS)
    | {"name", "org.apache.cloudstack.storage.to.SnapshotObjectTO"}
)
enum_names = st.sampled_from(["NetworkFilesystem", "SharedMountPoint", "QCOW2", "ROOT", "Guest"])
nested_json = st.recursive(
    scalars | enum_names,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(TYPED_NAMES) | st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=16,
)


@functools.cache  # one strategy per (type, depth), not one per example drawn
def shaped(tp: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    """Values of the shape ``tp`` has on the wire, now and then of any other shape."""
    noise = nested_json

    def mostly(typed: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        # One value in twenty is of any shape: enough to hit every type check, few enough
        # that most objects decode and their nested fields get exercised too.
        if not depth:
            return typed
        return st.sampled_from(range(20)).flatmap(lambda i: noise if i == 19 else typed)

    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return st.one_of([shaped(a, depth) for a in typing.get_args(tp) if a is not type(None)])
    if tp is Any:
        return noise
    if depth >= 6:
        return st.none()  # null: the field keeps its default
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        name = st.sampled_from([m.value for m in tp]) | st.text(max_size=6)
        return mostly(name | st.fixed_dictionaries({"name": name}))
    if (root := interface_root(tp)) is not None:
        impl = st.sampled_from(list(root.IMPLEMENTATIONS.values()))
        return mostly(
            impl.flatmap(
                lambda cls: st.dictionaries(
                    st.just(cls.JAVA_CLASS) | st.text(max_size=8),
                    shaped(cls, depth + 1),
                    max_size=2,
                )
            )
        )
    if origin is list:
        return mostly(st.lists(shaped(typing.get_args(tp)[0], depth + 1), max_size=3))
    if origin is dict:
        kt, vt = typing.get_args(tp)
        keys = st.integers(-5, 5).map(str) if kt is int else st.text(max_size=4)
        return mostly(st.dictionaries(keys, shaped(vt, depth + 1), max_size=3))
    if isinstance(tp, type) and attrs.has(tp):
        hints = typing.get_type_hints(tp)
        fields = {
            f.metadata[JSON_NAME]: shaped(hints[f.name], depth + 1)
            for f in attrs.fields(tp)
            if JSON_NAME in f.metadata
        }
        return mostly(st.fixed_dictionaries({}, optional=fields))
    plain = {bool: st.booleans(), int: st.integers(), float: st.floats(allow_nan=False)}
    return mostly(plain.get(tp, st.text(max_size=8)))


@given(st.sampled_from(TYPED).flatmap(lambda cls: st.tuples(st.just(cls), shaped(cls))))
def test_typed_decoders_of_zone_and_vm_classes(case: tuple[type, Any]) -> None:
    cls, fields = case
    if not isinstance(fields, dict):
        return
    try:
        value: Any = from_json(cls, fields, cls.__name__)
    except BodyError:
        return
    # What was read is written so that it reads back the same, and writes the same again.
    written = to_json(value)
    again: Any = from_json(cls, written, cls.__name__)
    assert again == value
    assert to_json(again) == written


@given(st.binary(max_size=120))
@example(b"\x01" + b"\0" * 39)
def test_header_decoder(data: bytes) -> None:
    try:
        header = Header.decode(data)
    except HeaderError:
        return
    assert header.length >= 0


@given(bodies)
def test_structure_decoder(value: Any) -> None:
    try:
        messages = decode_array(value)
    except BodyError:
        return
    # Whatever decodes re-encodes, and decodes to the same value again.
    raw = encode_messages(messages)
    assert decode_body(raw, length=len(raw), compressed=False) == messages


@given(st.binary(max_size=300), st.integers(-5, 400), st.booleans())
def test_body_decoder_bytes(data: bytes, length: int, compressed: bool) -> None:
    with contextlib.suppress(BodyError):
        decode_body(data, length=length, compressed=compressed, max_size=1 << 16)


@given(bodies, st.booleans(), st.integers(-3, 3))
def test_body_decoder_json_and_gzip(value: Any, compressed: bool, skew: int) -> None:
    raw = json.dumps(value).encode()
    data = gzip.compress(raw) if compressed else raw
    with contextlib.suppress(BodyError):
        decode_body(data, length=len(raw) + skew, compressed=compressed)


@given(st.binary(min_size=40, max_size=400))
def test_session_decoder(data: bytes) -> None:
    for role in Role:
        with contextlib.suppress(ProtocolError):
            Session(role).receive_message(data)


@given(st.lists(message_items, min_size=1, max_size=3), st.integers(0, 0xFF), st.booleans())
def test_session_decoder_with_valid_headers(items: list[Any], flags: int, lie: bool) -> None:
    raw = json.dumps(items).encode()
    length = len(raw) + (7 if lie else 0)
    data = struct.pack(">BBHqiqqq", 0, 0, flags & ~0x18, 1, length, -1, 1, 1) + raw
    with contextlib.suppress(ProtocolError):
        Session(Role.AGENT).receive_message(data)


@pytest.fixture(scope="module")
def contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """Mutual TLS 1.2 for the link decoder, which trusts nothing itself (the trust rule has
    tests of its own): trustme's ECDSA certificates keep each example's handshake cheap
    (with the CloudStack-made RSA 4096 CA a handshake was most of an example's time)."""
    ca = trustme.CA()
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.minimum_version = server.maximum_version = ssl.TLSVersion.TLSv1_2  # as the Java MS
    server.verify_mode = ssl.CERT_REQUIRED
    ca.issue_cert("ms.test").configure_cert(server)
    ca.configure_trust(server)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.minimum_version = ssl.TLSVersion.TLSv1_2
    client.check_hostname = False  # the Java agent checks none either
    ca.issue_cert("agent.test").configure_cert(client)
    ca.configure_trust(client)
    return client, server


@given(st.binary(max_size=400))
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_link_decoder_during_handshake(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext], data: bytes
) -> None:
    server = Link(contexts[1], server_side=True)
    server.receive_data(data)
    try:
        while server.next_event() is not None:
            pass
    except LinkError:
        pass


@given(st.lists(st.tuples(st.integers(0, 0x3FFFF), st.binary(max_size=64)), max_size=4))
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_link_decoder_after_handshake(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext], chunks: list[tuple[int, bytes]]
) -> None:
    client = Link(contexts[0], server_side=False)
    server = Link(contexts[1], server_side=True)
    to_server = client.initiate()
    for _ in range(4):
        server.receive_data(to_server)
        while server.next_event() is not None:
            pass
        if to_client := server.data_to_send():
            client.receive_data(to_client)
        while client.next_event() is not None:
            pass
        if not (to_server := client.data_to_send()):
            break
    # A real message first, then arbitrary chunks.
    wire = client.send_message(b"hello")
    wire += b"".join(struct.pack(">I", h) + body for h, body in chunks)
    server.receive_data(wire)
    try:
        while server.next_event() is not None:
            pass
    except LinkError:
        pass
