"""A management server's TLS end that records what a client sends, for the trust tests.

It runs in a thread on a real socket and drives :class:`protocol.link.Link` (the same link
the lab MS uses) with any server context: it answers nothing, keeps every byte the client
sent, whether the handshake completed, and every message it could decrypt. Whether a
refused client sent any byte of its session is read off the raw bytes: before the
handshake completes they are plain TLS records, and a TLS 1.2 client that refused the
server's certificate sent only handshake (22) and alert (21) records, never a
ChangeCipherSpec (20) or application data (23).
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from attrs import define, field

from protocol.errors import LinkError
from protocol.link import HandshakeComplete, Link, LinkClosed, MessageReceived

HANDSHAKE, ALERT, CHANGE_CIPHER_SPEC, APPLICATION_DATA = 22, 21, 20, 23


@define
class Recorded:
    """One accepted connection."""

    raw: bytearray = field(factory=bytearray)  # every byte the client sent
    tls_version: str | None = None  # set once the handshake completed
    messages: list[bytes] = field(factory=list)  # decrypted plaintext messages
    error: str | None = None  # the link's error, if any
    done: threading.Event = field(factory=threading.Event)


def record_types(raw: bytes) -> list[int]:
    """The content types of the TLS records ``raw`` consists of; ValueError when ``raw`` is
    not a whole number of plain TLS records (chunk framing, a cut record)."""
    types, pos = [], 0
    while pos < len(raw):
        if len(raw) - pos < 5:
            raise ValueError(f"{len(raw) - pos} bytes left, less than a record header")
        kind, size = raw[pos], int.from_bytes(raw[pos + 3 : pos + 5], "big")
        if kind not in (CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA):
            raise ValueError(f"byte {pos} starts no TLS record (type {kind})")
        pos += 5 + size
        if pos > len(raw):
            raise ValueError("the last record is cut")
        types.append(kind)
    return types


class RecordingServer:
    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.connections: list[Recorded] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="recording-ms", daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            with conn:
                record = Recorded()
                self.connections.append(record)
                self._handle(conn, record)
                record.done.set()

    def _handle(self, conn: socket.socket, record: Recorded) -> None:
        conn.settimeout(0.1)
        link = Link(self.context, server_side=True)
        while not self._stop.is_set():
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            record.raw += data
            link.receive_data(data)
            try:
                while (event := link.next_event()) is not None:
                    if isinstance(event, HandshakeComplete):
                        record.tls_version = event.tls_version
                    elif isinstance(event, MessageReceived):
                        record.messages.append(event.data)
                    elif isinstance(event, LinkClosed):
                        return
            except LinkError as exc:
                record.error = str(exc)
            try:
                conn.sendall(link.data_to_send())
            except OSError:
                return
            if not data or record.error is not None:
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()


@contextmanager
def recording_server(context: ssl.SSLContext) -> Iterator[RecordingServer]:
    server = RecordingServer(context)
    server._thread.start()
    try:
        yield server
    finally:
        server.stop()
