"""The protocol's two kinds of error, as h11 has them.

:class:`RemoteProtocolError`: the peer sent something this protocol does not accept. The
caller reports it and, for a :class:`LinkError`, drops the connection; any other one concerns
one message. :class:`LocalProtocolError`: our own side misused the protocol (a value with no
JSON form, a body over the size limit, a header field out of range, sending on a link that is
not open): a bug or a limit on our side, never the peer's fault.

Messages say what was wrong and never quote secret field values or large payloads.
"""

from __future__ import annotations


class RemoteProtocolError(Exception):
    """Base class: the peer sent something this protocol does not accept."""


# The name of the peer's tree before the split; the same class.
ProtocolError = RemoteProtocolError


class LocalProtocolError(Exception):
    """Our own side cannot produce a valid message or used the link wrongly. Not a
    :class:`RemoteProtocolError`: the peer did nothing wrong."""


class LinkError(RemoteProtocolError):
    """The TLS/chunk layer failed; the connection cannot continue."""


class TLSError(LinkError):
    """The TLS handshake or a TLS record failed (bad certificate, alert, corrupt record)."""


class FrameError(LinkError):
    """A chunk header or chunk boundary is invalid (size, bits, cut TLS record)."""


class MessageTooLarge(LinkError):
    """A message exceeds the configured maximum size."""


class HeaderError(RemoteProtocolError):
    """The 40-byte request/response header is invalid."""


class BodyError(RemoteProtocolError):
    """The body (gzip, JSON, structure or field types) is invalid.

    ``header`` is the message's :class:`~protocol.header.Header` when it parsed, so that a
    request can still be answered. (Typed ``object`` so that this module, which the header
    module imports, does not import it back.)
    """

    def __init__(self, message: str, header: object | None = None) -> None:
        super().__init__(message)
        self.header = header


class SessionError(RemoteProtocolError):
    """A well-formed message arrived that the session rules do not allow."""


class UnexpectedResponse(SessionError):
    """A response whose sequence number matches no request in flight."""


class StartupRequired(SessionError):
    """Management side: the first request of a connection was not a StartupRoutingCommand."""
