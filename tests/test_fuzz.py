"""Hypothesis fuzzing of every decoder: only the protocol's own error may escape.

CI runs each test with at least 10,000 examples (the "ci" profile in conftest.py).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import ssl
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lab.ca import LabCA
from protocol.codec import decode_array, decode_body, encode_messages
from protocol.errors import BodyError, HeaderError, LinkError, ProtocolError
from protocol.header import Header
from protocol.link import Link
from protocol.model import message_classes
from protocol.session import Role, Session
from tests.conftest import client_context, tls12_server_context

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
    ]
) | st.text(max_size=10)
message_items = st.builds(
    lambda name, fields: {name: fields},
    class_names,
    st.dictionaries(field_names, json_values, max_size=5),
)
bodies = st.lists(message_items | json_values, max_size=3) | json_values


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
def contexts(ca: LabCA) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    return client_context(ca), tls12_server_context(ca)


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
