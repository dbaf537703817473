"""One error hierarchy for everything the protocol layer can reject.

Every malformed input raises a subclass of :class:`ProtocolError` with a message that says
what was wrong. Messages never quote secret field values or large payloads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from protocol.header import Header


class ProtocolError(Exception):
    """Base class: the peer sent something this protocol does not accept."""


class LocalProtocolError(Exception):
    """Our own side cannot produce a valid message (a value that has no JSON form, a body
    over the size limit). Not a :class:`ProtocolError`: the peer did nothing wrong."""


class LinkError(ProtocolError):
    """The TLS/chunk layer failed; the connection cannot continue."""


class TLSError(LinkError):
    """The TLS handshake or a TLS record failed (bad certificate, alert, corrupt record)."""


class FrameError(LinkError):
    """A chunk header or chunk boundary is invalid (size, bits, cut TLS record)."""


class MessageTooLarge(LinkError):
    """A message exceeds the configured maximum size."""


class HeaderError(ProtocolError):
    """The 40-byte request/response header is invalid."""


class BodyError(ProtocolError):
    """The body (gzip, JSON, structure or field types) is invalid.

    ``header`` is set when the header parsed, so that a request can still be answered.
    """

    def __init__(self, message: str, header: Header | None = None) -> None:
        super().__init__(message)
        self.header = header


class SessionError(ProtocolError):
    """A well-formed message arrived that the session rules do not allow."""


class UnexpectedResponse(SessionError):
    """A response whose sequence number matches no request in flight."""


class StartupRequired(SessionError):
    """Management side: the first request of a connection was not a StartupRoutingCommand."""
