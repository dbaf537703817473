"""One agent connection on the lab MS: the stream, and what the MS knows about it.

:class:`MsStream` adds to the agent's :class:`~agent.link.transport.MessageStream` what the
Java MS does with a listener (``AgentManager.send(hostId, Commands, Listener)``): the request
is written now, in order with what the MS sends next, and its answer is collected later
without holding anything up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import trio
from attrs import define, field
from structlog.typing import FilteringBoundLogger

# _Waiter is the transport's own response slot: a request written here is answered
# through the same reader as MessageStream.request's.
from agent.link.transport import MessageStream, RequestTimeout, _Waiter
from protocol import Message, Request, Response


@define(eq=False)
class Submitted:
    """A request on the wire whose answer may be awaited later."""

    stream: MessageStream
    request: Request
    _waiter: _Waiter

    async def response(self, timeout: float = math.inf) -> Response:
        """The response (RequestTimeout, ConnectionLost), as MessageStream.request's."""
        try:
            with trio.move_on_after(timeout):
                await self._waiter.event.wait()
        finally:
            if self._waiter.response is None and self._waiter.error is None:
                self.stream.session.forget(self.request.sequence)
        if self._waiter.error is not None:
            raise self._waiter.error
        if self._waiter.response is None:
            raise RequestTimeout(f"no answer to seq {self.request.sequence} within {timeout}s")
        return self._waiter.response


class MsStream(MessageStream):
    async def submit(
        self, commands: Sequence[Message], *, stop_on_error: bool = False
    ) -> Submitted:
        """Write a request and return at once; ``await submitted.response()`` later.
        Requests submitted one after the other leave in that order."""
        waiter = _Waiter()
        async with self._write_lock:
            self._check_open()
            request, data = self.conn.send_request(
                commands, stop_on_error=stop_on_error, tag=waiter
            )
            await self._send(data)
        return Submitted(self, request, waiter)


@define(eq=False)
class AgentLink:
    """One agent connection and what the session has learnt about it.

    ``attached``: the MS's "attache" for this link is live; the MS detaches it when it
    puts the host in Alert or Disconnected (and closes the link), so that the end of the
    connection is not taken for a new disconnection.
    """

    stream: MsStream
    log: FilteringBoundLogger
    requests: trio.MemorySendChannel[Request]
    nursery: trio.Nursery
    accepted_at: float = 0.0  # trio time of the TCP accept
    guid: str | None = None
    host_id: int | None = None
    startups: int = 0
    ready: bool = False
    attached: bool = False
    ended: trio.Event = field(factory=trio.Event)
