"""A Link and a Session joined: transport bytes in, session events out.

This is what both the agent and the lab management server drive over a TCP stream.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Any

from protocol.link import DEFAULT_MAX_MESSAGE, HandshakeComplete, Link, LinkClosed, LinkEvent
from protocol.model import Message
from protocol.session import Request, Response, Session

ConnectionEvent = HandshakeComplete | Request | Response | LinkClosed


class Connection:
    """Feed ``receive_data``; call ``next_event`` until None; send ``data_to_send``.

    A :class:`~protocol.errors.LinkError` from ``next_event`` is final. Any other
    :class:`~protocol.errors.RemoteProtocolError` concerns one message; the next call carries
    on. Sending raises :class:`~protocol.errors.LocalProtocolError` for what we cannot send.
    """

    def __init__(
        self,
        session: Session,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE,
    ) -> None:
        self.session = session
        self.link = Link(
            context,
            server_side=server_side,
            server_hostname=server_hostname,
            max_message_size=max_message_size,
        )

    def initiate(self) -> bytes:
        return self.link.initiate()

    def receive_data(self, data: bytes) -> None:
        self.link.receive_data(data)

    def data_to_send(self) -> bytes:
        return self.link.data_to_send()

    def next_event(self) -> ConnectionEvent | None:
        event = self.next_link_event()
        if event is None or isinstance(event, HandshakeComplete | LinkClosed):
            return event
        return self.decode(event.data)

    def next_link_event(self) -> LinkEvent | None:
        """``next_event`` in two steps, for a reader that looks at a message's header before
        paying for its body: this one returns the plaintext (MessageReceived)..."""
        return self.link.next_event()

    def decode(self, plaintext: bytes) -> Request | Response:
        """...and this one decodes it."""
        return self.session.receive_message(plaintext)

    def send_request(
        self,
        commands: Sequence[Message],
        *,
        stop_on_error: bool = False,
        expect_response: bool = True,
        tag: Any = None,
    ) -> tuple[Request, bytes]:
        request, plaintext = self.session.send_request(
            commands, stop_on_error=stop_on_error, expect_response=expect_response, tag=tag
        )
        return request, self.link.send_message(plaintext)

    def send_response(self, request: Request, answers: Sequence[Message]) -> bytes:
        return self.link.send_message(self.session.send_response(request, answers))

    def encode_response(self, request: Request, answers: Sequence[Message]) -> bytes:
        """The plaintext of a response, not yet encrypted (``send_plaintext`` sends it)."""
        return self.session.send_response(request, answers)

    def send_plaintext(self, plaintext: bytes) -> bytes:
        return self.link.send_message(plaintext)

    def close(self) -> bytes:
        return self.link.close()
