"""A protocol Connection driven over a trio stream: one reader task, serialised writers.

Used by the agent (client side) and by the lab management server (server side). Every
stream or link failure surfaces as one domain error, :class:`ConnectionLost`.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import Callable, Sequence
from typing import Any

import structlog
import trio
from attrs import define, field

from agent.link.budget import ByteBudget
from protocol import (
    Answer,
    BodyError,
    Connection,
    HandshakeComplete,
    HeaderError,
    LinkClosed,
    LinkError,
    Message,
    RemoteProtocolError,
    Request,
    Response,
    Session,
)
from protocol.header import Header

_READ_SIZE = 65536
_WRITE_PIECE = 65536  # the unit of write progress the stall time-out watches
DEFAULT_STALL_TIMEOUT = 120.0  # two default ping intervals; a session sets its own
log = structlog.get_logger("agent.transport")


class ConnectionLost(Exception):
    """The stream ended, failed, or carried something the link cannot recover from."""


class RequestTimeout(Exception):
    """No response arrived in time; the connection itself may still be fine."""


@define
class _Waiter:
    event: trio.Event = field(factory=trio.Event)
    response: Response | None = None
    error: Exception | None = None


def _is_request(plaintext: bytes) -> bool:
    try:
        return Header.decode(plaintext).is_request
    except HeaderError:
        return False  # decoding the message reports it


class MessageStream:
    """Owns one TLS connection. ``run`` is the only reader; writes go through one lock,
    which also keeps TLS records in the order they were encrypted.

    ``budget``, when set, bounds what the peer can make us hold: the reader decodes no
    request while it is spent, and answers waiting to be written are charged to it.
    ``stall_timeout``: a peer that takes none of our bytes for that long is lost.
    """

    def __init__(self, stream: trio.abc.Stream, conn: Connection, peer: str) -> None:
        self._stream = stream
        self.conn = conn
        self.peer = peer
        self._write_lock = trio.Lock()
        self._closed: ConnectionLost | None = None
        self.peer_certificate: bytes | None = None
        self.budget: ByteBudget | None = None
        self.stall_timeout = DEFAULT_STALL_TIMEOUT

    @property
    def session(self) -> Session:
        return self.conn.session

    # --- opening --------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        context: ssl.SSLContext,
        session: Session,
        *,
        connect_timeout: float,
        handshake_timeout: float,
        server_hostname: str | None = None,
        max_message_size: int = 16 * 1024 * 1024,
    ) -> MessageStream:
        """TCP connect and TLS handshake as a client. Raises ConnectionLost."""
        peer = f"{host}:{port}"
        with trio.move_on_after(connect_timeout) as scope:
            try:
                stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
            except OSError as exc:
                raise ConnectionLost(f"cannot connect to {peer}: {exc.strerror or exc}") from None
            except (UnicodeError, ValueError) as exc:  # a name getaddrinfo cannot even encode
                raise ConnectionLost(f"cannot connect to {peer[:120]}: {exc}") from None
        if scope.cancelled_caught:
            raise ConnectionLost(f"cannot connect to {peer}: timed out after {connect_timeout}s")
        conn = Connection(
            session,
            context,
            server_side=False,
            server_hostname=server_hostname,
            max_message_size=max_message_size,
        )
        self = cls(stream, conn, peer)
        await self._handshake(handshake_timeout)
        return self

    @classmethod
    async def accept(
        cls,
        stream: trio.abc.Stream,
        context: ssl.SSLContext,
        session: Session,
        *,
        peer: str,
        handshake_timeout: float,
        max_message_size: int = 16 * 1024 * 1024,
    ) -> MessageStream:
        """TLS handshake as a server on an accepted stream. Raises ConnectionLost."""
        conn = Connection(session, context, server_side=True, max_message_size=max_message_size)
        self = cls(stream, conn, peer)
        await self._handshake(handshake_timeout)
        return self

    async def _handshake(self, timeout: float) -> None:
        with trio.move_on_after(timeout) as scope:
            try:
                await self._write(self.conn.initiate())
                while True:
                    data = await self._read()
                    self.conn.receive_data(data)
                    event = self.conn.next_event()
                    await self._write(self.conn.data_to_send())
                    if isinstance(event, HandshakeComplete):
                        self.peer_certificate = event.peer_certificate
                        return
                    if not data:
                        raise ConnectionLost(f"{self.peer} closed during the TLS handshake")
            except LinkError as exc:
                await self._write_quietly(self.conn.data_to_send())  # the TLS alert, if any
                await self._abort()
                raise ConnectionLost(f"TLS with {self.peer} failed: {exc}") from None
            except BaseException:  # ConnectionLost, or cancelled (the agent is stopping)
                await self._abort()
                raise
        if scope.cancelled_caught:
            await self._abort()
            raise ConnectionLost(f"TLS handshake with {self.peer} timed out after {timeout}s")

    # --- reading --------------------------------------------------------------------

    async def run(self, on_request: Callable[[Request], None]) -> None:
        """Read until the connection ends; always ends by raising ConnectionLost.

        Responses wake their waiters; requests go to ``on_request``, which must not block.
        """
        try:
            while True:
                # Drain first: the handshake's last read may already hold a message.
                while True:
                    try:
                        raw = self.conn.next_link_event()
                    except LinkError as exc:
                        raise ConnectionLost(f"link to {self.peer} failed: {exc}") from None
                    if raw is None:
                        break
                    if isinstance(raw, LinkClosed):
                        how = "closed the connection" if raw.clean else "went away"
                        raise ConnectionLost(f"{self.peer} {how}")
                    if isinstance(raw, HandshakeComplete):
                        continue
                    if self.budget is not None and _is_request(raw.data):
                        # Backpressure: decode (and so hold) no more until answers went out.
                        # Responses (pings, startup) are small and always read.
                        await self.budget.wait_for_room()
                    try:
                        event = self.conn.decode(raw.data)
                    except RemoteProtocolError as exc:
                        await self._on_bad_message(exc)
                        continue
                    if isinstance(event, Response):
                        self._deliver(event)
                    else:
                        on_request(event)
                self.conn.receive_data(await self._read())
        except ConnectionLost as exc:
            self._fail_waiters(exc)
            raise
        finally:
            await self._shutdown()

    def _deliver(self, response: Response) -> None:
        waiter = response.tag
        if isinstance(waiter, _Waiter):
            waiter.response = response
            waiter.event.set()

    async def _on_bad_message(self, exc: RemoteProtocolError) -> None:
        log.warning("bad message", peer=self.peer, error=str(exc))
        header = exc.header if isinstance(exc, BodyError) else None
        if not isinstance(header, Header):
            header = None
        # Before startup the MS side throws everything away, as the Java MS does.
        if header is not None and header.is_request and self.session.started:
            # Answer what we could not read, so the peer does not wait for it forever.
            await self.respond(
                Request(header, ()), [Answer(result=False, details=f"malformed request: {exc}")]
            )

    def _fail_waiters(self, exc: ConnectionLost) -> None:
        self._closed = exc
        for waiter in self.session.forget_all():
            if isinstance(waiter, _Waiter):
                waiter.error = exc
                waiter.event.set()

    # --- writing --------------------------------------------------------------------

    async def request(
        self,
        commands: Sequence[Message],
        *,
        stop_on_error: bool = False,
        timeout: float = math.inf,
    ) -> Response:
        """Send a request and wait for its response (RequestTimeout, ConnectionLost)."""
        waiter = _Waiter()
        async with self._write_lock:
            self._check_open()
            # The session's table of requests in flight holds the waiter: one table.
            request, data = self.conn.send_request(
                commands, stop_on_error=stop_on_error, tag=waiter
            )
            await self._send(data)
        try:
            with trio.move_on_after(timeout):
                await waiter.event.wait()
        finally:
            # Timed out or cancelled from outside: stop waiting for this sequence.
            if waiter.response is None and waiter.error is None:
                self.session.forget(request.sequence)
        if waiter.error is not None:
            raise waiter.error
        if waiter.response is None:
            raise RequestTimeout(f"no answer to seq {request.sequence} within {timeout}s")
        return waiter.response

    async def send(self, commands: Sequence[Message], *, stop_on_error: bool = False) -> Request:
        """Send a request whose response is not awaited."""
        async with self._write_lock:
            self._check_open()
            request, data = self.conn.send_request(
                commands, stop_on_error=stop_on_error, expect_response=False
            )
            await self._send(data)
        return request

    async def respond(self, request: Request | Header, answers: Sequence[Message]) -> None:
        """Send a response. LocalProtocolError if the answers cannot be encoded (nothing is
        sent then); ConnectionLost if the connection is gone."""
        if isinstance(request, Header):
            request = Request(request, ())
        self._check_open()
        plaintext = self.conn.encode_response(request, answers)
        charged = len(plaintext) if self.budget is not None else 0
        if self.budget is not None:
            self.budget.charge(charged)
        try:
            async with self._write_lock:
                self._check_open()
                await self._send(self.conn.send_plaintext(plaintext))
        finally:
            if self.budget is not None:
                self.budget.release(charged)

    async def aclose(self) -> None:
        """Send close_notify and close the stream (bounded by a short grace period)."""
        await self._shutdown()

    async def _shutdown(self) -> None:
        with trio.CancelScope(shield=True):
            if self._closed is None:
                with trio.move_on_after(0.5):
                    async with self._write_lock:
                        await self._write_quietly(self.conn.close())
                self._fail_waiters(ConnectionLost("closed locally"))
            await self._abort()

    def _check_open(self) -> None:
        if self._closed is not None:
            raise self._closed

    async def _send(self, data: bytes) -> None:
        try:
            await self._write(data)
        except ConnectionLost as exc:
            self._fail_waiters(exc)
            raise

    # --- the stream -----------------------------------------------------------------

    async def _read(self) -> bytes:
        try:
            return bytes(await self._stream.receive_some(_READ_SIZE))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise ConnectionLost(f"connection to {self.peer} lost: {exc}") from None

    async def _write(self, data: bytes) -> None:
        view = memoryview(data)
        for start in range(0, len(view), _WRITE_PIECE):
            with trio.move_on_after(self.stall_timeout) as scope:
                try:
                    await self._stream.send_all(view[start : start + _WRITE_PIECE])
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    raise ConnectionLost(f"connection to {self.peer} lost: {exc}") from None
                except BaseException:
                    # Cancelled part-way: the peer may have half a TLS record, so this
                    # stream cannot carry another byte. Close it rather than corrupt it.
                    self._fail_waiters(ConnectionLost(f"a write to {self.peer} was interrupted"))
                    await self._abort()
                    raise
            if scope.cancelled_caught:
                # The peer reads nothing we send (our pings cannot leave either): it is
                # lost. Closing the stream also ends the reader.
                await self._abort()
                raise ConnectionLost(
                    f"{self.peer} has read nothing the agent sent for "
                    f"{self.stall_timeout:g}s; closing the connection"
                )

    async def _write_quietly(self, data: bytes) -> None:
        try:
            await self._write(data)
        except ConnectionLost:
            pass

    async def _abort(self) -> None:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(self._stream)


def describe(value: Any) -> str:
    """A short name for a message or event, for logs."""
    return getattr(value, "java_class", type(value).__name__).rsplit(".", 1)[-1]
