"""The Link layer: a TLS session driven as bytes in / bytes out, framed in chunks.

CloudStack's Java ``Link`` runs the TLS handshake directly on the socket, then sends every
TLS record as one chunk: a u32 big-endian header holding the record length in its low 16
bits and 0x10000 on every chunk but the last of a message. ``ssl.SSLObject`` over two
``MemoryBIO``s lets us see record boundaries, which a socket-level TLS wrapper hides.
"""

from __future__ import annotations

import enum
import ssl
import struct
from typing import Final

from attrs import frozen

from protocol.errors import FrameError, LinkError, LocalProtocolError, MessageTooLarge, TLSError

MAX_CHUNK: Final = 18000  # the Java reader's limit ("Wrong packet size")
MORE_CHUNKS: Final = 0x10000
MAX_PLAINTEXT_PER_RECORD: Final = 16384
DEFAULT_MAX_MESSAGE: Final = 16 * 1024 * 1024
_TLS_RECORD_HEADER: Final = 5
_TLS_MAX_RECORD: Final = 16384 + 2048  # TLSCiphertext limit (RFC 5246 6.2.3)
_TLS_CONTENT_TYPES: Final = frozenset({20, 21, 22, 23})
_U32: Final = struct.Struct(">I")


class LinkState(enum.Enum):
    HANDSHAKING = "handshaking"
    OPEN = "open"
    CLOSED = "closed"
    ERROR = "error"


@frozen
class HandshakeComplete:
    tls_version: str
    cipher: str
    peer_certificate: bytes | None  # DER; None when the peer sent none


@frozen
class MessageReceived:
    data: bytes


@frozen
class LinkClosed:
    """The peer sent close_notify or the transport reached EOF."""

    clean: bool


LinkEvent = HandshakeComplete | MessageReceived | LinkClosed


def _records(data: bytes | bytearray) -> list[bytes]:
    """Split TLS output into whole records (our own SSLObject's output, so well-formed)."""
    out, pos = [], 0
    while pos < len(data):
        size = int.from_bytes(data[pos + 3 : pos + 5], "big")
        out.append(bytes(data[pos : pos + _TLS_RECORD_HEADER + size]))
        pos += _TLS_RECORD_HEADER + size
    return out


class Link:
    """One end of a TLS link with CloudStack chunk framing. No I/O: feed bytes, send bytes.

    Use: ``initiate()`` (client hello for a client), then ``receive_data()`` with what the
    socket read and ``next_event()`` until it returns None, sending ``data_to_send()`` after
    each. Once open, ``send_message()`` returns the framed bytes of one message.
    Any :class:`LinkError` is final: the link is unusable afterwards.
    """

    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE,
    ) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(
            self._in, self._out, server_side=server_side, server_hostname=server_hostname
        )
        self.max_message_size = max_message_size
        self.state = LinkState.HANDSHAKING
        self._raw = bytearray()  # bytes from the transport not yet processed
        self._send = bytearray()  # bytes for the transport
        self._message = bytearray()  # plaintext of the message being assembled
        self._eof = False
        self._error: LinkError | None = None

    # --- output ---------------------------------------------------------------------

    def initiate(self) -> bytes:
        """Start the handshake; returns the ClientHello for a client, b"" for a server."""
        if self.state is LinkState.HANDSHAKING:
            self._step_handshake()
        return self.data_to_send()

    def data_to_send(self) -> bytes:
        """Bytes the transport must send (handshake flights, alerts, framed messages)."""
        if self.state is LinkState.HANDSHAKING or self._error is not None:
            self._send += self._out.read()  # handshake records and alerts go unframed
        data = bytes(self._send)
        self._send.clear()
        return data

    def send_message(self, plaintext: bytes) -> bytes:
        """Encrypt one message and return its chunks (plus anything else pending).
        LocalProtocolError when the link is not open or the message is empty."""
        self._check_open()
        if not plaintext:
            raise LocalProtocolError("a message cannot be empty")
        records: list[bytes] = []
        for start in range(0, len(plaintext), MAX_PLAINTEXT_PER_RECORD):
            self._ssl.write(plaintext[start : start + MAX_PLAINTEXT_PER_RECORD])
            records.extend(_records(self._out.read()))
        for i, record in enumerate(records):
            more = MORE_CHUNKS if i < len(records) - 1 else 0
            self._send += _U32.pack(len(record) | more) + record
        return self.data_to_send()

    def close(self) -> bytes:
        """Send close_notify (framed, as every post-handshake record) and stop."""
        if self.state is LinkState.OPEN:
            try:
                self._ssl.unwrap()
            except ssl.SSLWantReadError:
                pass  # the peer's close_notify is not awaited
            except ssl.SSLError:
                pass
            for record in _records(self._out.read()):
                self._send += _U32.pack(len(record)) + record
        self.state = LinkState.CLOSED
        return self.data_to_send()

    # --- input ----------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes read from the transport; b"" means the transport reached EOF."""
        if data:
            self._raw += data
        else:
            self._eof = True

    def next_event(self) -> LinkEvent | None:
        """The next event, or None when more data is needed."""
        if self._error is not None:
            raise self._error
        if self.state is LinkState.CLOSED:
            return None
        try:
            event = self._next_event()
        except LinkError as exc:
            self.state = LinkState.ERROR
            self._error = exc
            raise
        if isinstance(event, LinkClosed):
            self.state = LinkState.CLOSED
        return event

    def _next_event(self) -> LinkEvent | None:
        if self.state is LinkState.HANDSHAKING:
            while self.state is LinkState.HANDSHAKING:
                record = self._take_tls_record()
                if record is None:
                    if self._eof:
                        raise TLSError("connection closed during the TLS handshake")
                    return None
                self._in.write(record)
                if self._step_handshake():
                    return self._handshake_event()
        while True:
            chunk = self._take_chunk()
            if chunk is None:
                if self._eof:
                    return LinkClosed(clean=False)
                return None
            body, more = chunk
            if self._decrypt(body):
                return LinkClosed(clean=True)
            if not more:
                message = bytes(self._message)
                self._message.clear()
                if message:
                    return MessageReceived(message)
                # An empty message carries nothing (e.g. a chunk of only non-data records).

    def _step_handshake(self) -> bool:
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLCertVerificationError as exc:
            raise TLSError(f"peer certificate rejected: {exc.verify_message}") from None
        except ssl.SSLError as exc:
            raise TLSError(f"TLS handshake failed: {exc.reason or exc}") from None
        self._send += self._out.read()  # the last handshake flight goes out unframed
        self.state = LinkState.OPEN
        return True

    def _handshake_event(self) -> HandshakeComplete:
        version = self._ssl.version() or ""
        if version != "TLSv1.2":
            # Post-handshake messages of TLS 1.3 (tickets, key updates) break the framing.
            raise TLSError(f"negotiated {version}; the CloudStack link supports TLS 1.2 only")
        cipher = self._ssl.cipher()
        return HandshakeComplete(
            tls_version=version,
            cipher=cipher[0] if cipher else "",
            peer_certificate=self._ssl.getpeercert(binary_form=True),
        )

    def _take_tls_record(self) -> bytes | None:
        if len(self._raw) < _TLS_RECORD_HEADER:
            return None
        content_type = self._raw[0]
        size = int.from_bytes(self._raw[3:5], "big")
        if content_type not in _TLS_CONTENT_TYPES or size > _TLS_MAX_RECORD:
            raise TLSError("peer did not start a TLS handshake (not a TLS record)")
        end = _TLS_RECORD_HEADER + size
        if len(self._raw) < end:
            return None
        record = bytes(self._raw[:end])
        del self._raw[:end]
        return record

    def _take_chunk(self) -> tuple[bytes, bool] | None:
        if len(self._raw) < 4:
            return None
        (header,) = _U32.unpack_from(self._raw)
        if header & ~(MORE_CHUNKS | 0xFFFF):
            raise FrameError(f"chunk header 0x{header:08x} has unknown bits set")
        size = header & 0xFFFF
        if size > MAX_CHUNK:
            raise FrameError(f"chunk of {size} bytes exceeds the limit of {MAX_CHUNK}")
        if size == 0:
            raise FrameError("empty chunk")
        if len(self._raw) < 4 + size:
            return None
        body = bytes(self._raw[4 : 4 + size])
        del self._raw[: 4 + size]
        return body, bool(header & MORE_CHUNKS)

    def _decrypt(self, chunk: bytes) -> bool:
        """Decrypt every record of a chunk into the message buffer; True on close_notify."""
        # The Java reader unwraps each chunk on its own, so a record cut across two chunks
        # is an error there; check here, before OpenSSL silently buffers the partial record.
        pos = 0
        while pos < len(chunk):
            if len(chunk) - pos < _TLS_RECORD_HEADER:
                raise FrameError("chunk ends inside a TLS record header")
            pos += _TLS_RECORD_HEADER + int.from_bytes(chunk[pos + 3 : pos + 5], "big")
        if pos != len(chunk):
            raise FrameError("chunk ends inside a TLS record")
        self._in.write(chunk)
        try:
            while True:
                data = self._ssl.read(MAX_CHUNK)
                if not data:  # SSLObject.read returns b"" once close_notify arrived
                    return True
                self._message += data
                if len(self._message) > self.max_message_size:
                    raise MessageTooLarge(
                        f"message exceeds the maximum size of {self.max_message_size} bytes"
                    )
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            return True
        except ssl.SSLError as exc:
            raise TLSError(f"TLS record rejected: {exc.reason or exc}") from None
        return False

    def _check_open(self) -> None:
        if self._error is not None:
            raise LocalProtocolError(f"cannot send: the link failed earlier ({self._error})")
        if self.state is not LinkState.OPEN:
            raise LocalProtocolError(f"link is {self.state.value}, cannot send")
