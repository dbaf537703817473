"""The session state machine for both ends: sequence numbers, pairing, the startup rule.

No I/O: ``send_request``/``send_response`` return the plaintext of a message (header and
body), ``receive_message`` turns a plaintext message into a :class:`Request` or a
:class:`Response`. The Link layer (or anything else) carries those bytes.
"""

from __future__ import annotations

import enum
import itertools
import random
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from attrs import field, frozen

from protocol.codec import DEFAULT_MAX_BODY, decode_body, encode_body
from protocol.errors import BodyError, StartupRequired, UnexpectedResponse
from protocol.header import HEADER_SIZE, Flags, Header
from protocol.messages.host import StartupRoutingCommand
from protocol.model import Message


def _messages(items: Iterable[Message]) -> tuple[Message, ...]:
    return tuple(items)


class Role(enum.Enum):
    AGENT = "agent"
    MANAGEMENT = "management"


@frozen
class Request:
    header: Header
    commands: tuple[Message, ...] = field(converter=_messages)

    @property
    def sequence(self) -> int:
        return self.header.sequence

    @property
    def stop_on_error(self) -> bool:
        return bool(self.header.flags & Flags.STOP_ON_ERROR)

    @property
    def in_sequence(self) -> bool:
        return bool(self.header.flags & Flags.IN_SEQUENCE)


@frozen
class Response:
    header: Header
    answers: tuple[Message, ...] = field(converter=_messages)
    request: Request  # the request this answers, paired by sequence number
    # What the sender attached to that request (``send_request(tag=...)``): a transport's
    # handle for whoever waits, so that the session's table is the only one.
    tag: Any = field(default=None, eq=False, repr=False)

    @property
    def sequence(self) -> int:
        return self.header.sequence


def _encode(header: Header, messages: Sequence[Message]) -> tuple[Header, bytes]:
    body, length, compressed = encode_body(messages)
    flags = header.flags | Flags.COMPRESSED if compressed else header.flags & ~Flags.COMPRESSED
    header = Header(
        flags=flags,
        sequence=header.sequence,
        length=length,
        mgmt_id=header.mgmt_id,
        agent_id=header.agent_id,
        via=header.via,
    )
    return header, header.encode() + body


class Session:
    """One end of a management-server/agent session.

    The agent numbers its requests from 0; the management server from a random
    ``0..32767 << 48``. Responses are paired to requests in flight by sequence alone.
    The management end accepts nothing before a StartupRoutingCommand.

    ``sequences`` lets the owner keep one counter across sessions: the Java agent numbers
    every request of its process with one counter, whatever the connection.
    """

    def __init__(
        self,
        role: Role,
        *,
        first_sequence: int = 0,
        sequences: Iterator[int] | None = None,
        mgmt_id: int = -1,
        agent_id: int = -1,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        self.role = role
        self.mgmt_id = mgmt_id
        self.agent_id = agent_id
        self.max_body = max_body
        self._sequences = sequences if sequences is not None else itertools.count(first_sequence)
        self._in_flight: dict[int, tuple[Request, Any]] = {}
        self._started = role is Role.AGENT

    @classmethod
    def for_agent(cls, agent_id: int = -1, sequences: Iterator[int] | None = None) -> Session:
        return cls(Role.AGENT, agent_id=agent_id, sequences=sequences)

    @classmethod
    def for_management(cls, mgmt_id: int, rng: random.Random | None = None) -> Session:
        first = (rng or random.SystemRandom()).randint(0, 32767) << 48
        return cls(Role.MANAGEMENT, first_sequence=first, mgmt_id=mgmt_id)

    @property
    def started(self) -> bool:
        """Management end: a StartupRoutingCommand has arrived. Always true for the agent."""
        return self._started

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def send_request(
        self,
        commands: Sequence[Message],
        *,
        stop_on_error: bool = False,
        expect_response: bool = True,
        tag: Any = None,
    ) -> tuple[Request, bytes]:
        """``tag`` comes back on the Response (or from ``forget``), untouched."""
        flags = Flags.REQUEST
        if stop_on_error:
            flags |= Flags.STOP_ON_ERROR
        if any(c.executes_in_sequence() for c in commands):
            flags |= Flags.IN_SEQUENCE
        if self.role is Role.MANAGEMENT:
            flags |= Flags.FROM_SERVER
        header = Header(
            flags=flags,
            sequence=next(self._sequences),
            length=0,
            # The agent writes -1 as mgmtId in its own requests, as the Java agent does.
            mgmt_id=self.mgmt_id if self.role is Role.MANAGEMENT else -1,
            agent_id=self.agent_id,
            via=self.agent_id,
        )
        header, data = _encode(header, commands)
        request = Request(header, commands)
        if expect_response:
            self._in_flight[request.sequence] = (request, tag)
        return request, data

    def send_response(self, request: Request, answers: Sequence[Message]) -> bytes:
        header = request.header.response_header(0, compressed=False)
        _, data = _encode(header, answers)
        return data

    def forget(self, sequence: int) -> None:
        """Stop waiting for the response to ``sequence`` (a time-out, say)."""
        self._in_flight.pop(sequence, None)

    def forget_all(self) -> list[Any]:
        """Stop waiting for every response (the connection is gone); returns their tags."""
        tags = [tag for _request, tag in self._in_flight.values()]
        self._in_flight.clear()
        return tags

    def receive_message(self, data: bytes) -> Request | Response:
        """Parse one plaintext message. Errors concern this message only."""
        header = Header.decode(data)
        try:
            messages = decode_body(
                data[HEADER_SIZE:],
                length=header.length,
                compressed=header.compressed,
                max_size=self.max_body,
            )
        except BodyError as exc:
            raise BodyError(str(exc), header) from None
        if not self._started:
            if header.is_request and isinstance(messages[0], StartupRoutingCommand):
                self._started = True
            else:
                raise StartupRequired(
                    f"discarding {messages[0].java_class} (seq {header.sequence}): "
                    "the first message of a connection must be a StartupRoutingCommand"
                )
        if header.is_request:
            return Request(header, messages)
        pending = self._in_flight.pop(header.sequence, None)
        if pending is None:
            raise UnexpectedResponse(
                f"response seq {header.sequence} ({messages[0].java_class}) "
                "matches no request in flight"
            )
        request, tag = pending
        return Response(header, messages, request, tag)
