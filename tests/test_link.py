"""The Link layer: two in-memory TLS peers, no sockets."""

from __future__ import annotations

import ssl
import struct

import pytest

from lab.ca import LabCA
from protocol.errors import FrameError, MessageTooLarge, TLSError
from protocol.link import (
    MAX_CHUNK,
    MORE_CHUNKS,
    HandshakeComplete,
    Link,
    LinkClosed,
    LinkEvent,
    MessageReceived,
)
from tests.conftest import client_context, tls12_server_context


def pump(a: Link, b: Link, first: bytes = b"") -> tuple[list[LinkEvent], list[LinkEvent]]:
    """Move bytes both ways until quiet; returns the events each side saw."""
    events_a: list[LinkEvent] = []
    events_b: list[LinkEvent] = []
    to_b = first
    for _ in range(50):
        if to_b:
            b.receive_data(to_b)
        while (ev := b.next_event()) is not None:
            events_b.append(ev)
        to_a = b.data_to_send()
        if to_a:
            a.receive_data(to_a)
        while (ev := a.next_event()) is not None:
            events_a.append(ev)
        to_b = a.data_to_send()
        if not to_a and not to_b:
            break
    return events_a, events_b


def connected(ca: LabCA) -> tuple[Link, Link]:
    client = Link(client_context(ca), server_side=False)
    server = Link(tls12_server_context(ca), server_side=True)
    ev_c, ev_s = pump(client, server, client.initiate())
    assert isinstance(ev_c[0], HandshakeComplete)
    assert isinstance(ev_s[0], HandshakeComplete)
    assert ev_c[0].tls_version == "TLSv1.2"
    assert ev_s[0].peer_certificate  # mutual TLS: the server saw the client certificate
    return client, server


def chunks(wire: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos < len(wire):
        (h,) = struct.unpack_from(">I", wire, pos)
        size = h & 0xFFFF
        out.append((h, wire[pos + 4 : pos + 4 + size]))
        pos += 4 + size
    return out


def test_small_message_is_one_chunk_without_more_bit(ca: LabCA) -> None:
    client, server = connected(ca)
    wire = client.send_message(b"x" * 264)
    ((header, record),) = chunks(wire)
    assert header & MORE_CHUNKS == 0
    assert record[0] == 23  # one TLS application-data record
    server.receive_data(wire)
    assert server.next_event() == MessageReceived(b"x" * 264)
    assert server.next_event() is None


def test_large_message_splits_into_records_and_reassembles(ca: LabCA) -> None:
    client, server = connected(ca)
    payload = bytes(range(256)) * 800  # 200 KiB
    wire = client.send_message(payload)
    parts = chunks(wire)
    assert len(parts) == 13  # ceil(204800 / 16384)
    assert all(h & MORE_CHUNKS for h, _ in parts[:-1])
    assert not parts[-1][0] & MORE_CHUNKS
    assert all(len(body) <= MAX_CHUNK for _, body in parts)
    # Fed one byte at a time, the message still arrives whole, exactly once.
    events = []
    for i in range(len(wire)):
        server.receive_data(wire[i : i + 1])
        while (ev := server.next_event()) is not None:
            events.append(ev)
    assert events == [MessageReceived(payload)]


def test_several_messages_in_one_read(ca: LabCA) -> None:
    client, server = connected(ca)
    wire = b"".join(client.send_message(f"msg {i}".encode() * 3000) for i in range(5))
    server.receive_data(wire)
    got = []
    while (ev := server.next_event()) is not None:
        got.append(ev)
    assert got == [MessageReceived(f"msg {i}".encode() * 3000) for i in range(5)]


def test_both_directions(ca: LabCA) -> None:
    client, server = connected(ca)
    client.receive_data(server.send_message(b"from server"))
    assert client.next_event() == MessageReceived(b"from server")


def test_oversized_chunk_rejected(ca: LabCA) -> None:
    _, server = connected(ca)
    server.receive_data(struct.pack(">I", MAX_CHUNK + 1) + b"\0" * 10)
    with pytest.raises(FrameError, match="exceeds the limit of 18000"):
        server.next_event()
    with pytest.raises(FrameError):  # final
        server.next_event()


def test_unknown_header_bits_rejected(ca: LabCA) -> None:
    _, server = connected(ca)
    server.receive_data(struct.pack(">I", 0x20010))
    with pytest.raises(FrameError, match="unknown bits"):
        server.next_event()


def test_record_cut_across_chunks_rejected(ca: LabCA) -> None:
    client, server = connected(ca)
    ((_, record),) = chunks(client.send_message(b"hello"))
    cut = struct.pack(">I", 10 | MORE_CHUNKS) + record[:10]
    server.receive_data(cut)
    with pytest.raises(FrameError, match="inside a TLS record"):
        server.next_event()


def test_corrupt_record_rejected(ca: LabCA) -> None:
    client, server = connected(ca)
    ((_, record),) = chunks(client.send_message(b"hello"))
    bad = record[:-1] + bytes([record[-1] ^ 1])
    server.receive_data(struct.pack(">I", len(bad)) + bad)
    with pytest.raises(TLSError, match="TLS record rejected"):
        server.next_event()


def test_max_message_size_enforced_while_buffering(ca: LabCA) -> None:
    client, _ = connected(ca)
    server = Link(tls12_server_context(ca), server_side=True, max_message_size=20_000)
    client = Link(client_context(ca), server_side=False)
    pump(client, server, client.initiate())
    wire = client.send_message(b"a" * 100_000)
    first_two = chunks(wire)[:2]
    server.receive_data(b"".join(struct.pack(">I", h) + body for h, body in first_two))
    with pytest.raises(MessageTooLarge):
        server.next_event()


def test_client_rejects_server_from_other_ca(ca: LabCA, other_ca: LabCA) -> None:
    client = Link(client_context(ca), server_side=False)
    server = Link(tls12_server_context(other_ca, require_client_cert=False), server_side=True)
    with pytest.raises(TLSError, match="certificate"):
        pump(client, server, client.initiate())


def test_server_rejects_client_without_certificate(ca: LabCA) -> None:
    client = Link(client_context(ca, with_client_cert=False), server_side=False)
    server = Link(tls12_server_context(ca), server_side=True)
    with pytest.raises(TLSError):
        pump(client, server, client.initiate())


def test_not_tls_rejected(ca: LabCA) -> None:
    server = Link(tls12_server_context(ca), server_side=True)
    server.receive_data(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(TLSError, match="not a TLS record"):
        server.next_event()


def test_eof_during_handshake(ca: LabCA) -> None:
    server = Link(tls12_server_context(ca), server_side=True)
    server.receive_data(b"")
    with pytest.raises(TLSError, match="closed during the TLS handshake"):
        server.next_event()


def test_close_notify_and_eof(ca: LabCA) -> None:
    client, server = connected(ca)
    server.receive_data(client.close())
    assert server.next_event() == LinkClosed(clean=True)
    _client2, server2 = connected(ca)
    server2.receive_data(b"")
    assert server2.next_event() == LinkClosed(clean=False)


def test_tls13_peer_refused(ca: LabCA) -> None:
    server_ctx = tls12_server_context(ca)
    server_ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    client_ctx = client_context(ca)
    client_ctx.maximum_version = ssl.TLSVersion.TLSv1_3  # the agent's own stops at 1.2
    client = Link(client_ctx, server_side=False)
    server = Link(server_ctx, server_side=True)
    with pytest.raises(TLSError, match=r"TLS 1\.2 only"):
        pump(client, server, client.initiate())
