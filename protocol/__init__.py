"""CloudStack's management-server protocol (port 8250), sans I/O.

Layers, bottom up:

* :mod:`protocol.link` — TLS as bytes in / bytes out, each record framed as a chunk;
* :mod:`protocol.header` — the 40-byte request/response header;
* :mod:`protocol.codec` — the Gson-compatible JSON body, gzip-compressed when large;
* :mod:`protocol.messages` — frozen attrs classes for the commands and answers, one module
  per room, each class registered by its Java name as it is defined;
* :mod:`protocol.session` — sequence numbers, request/response pairing, the startup rule;
* :mod:`protocol.connection` — a Link and a Session joined, for a transport to drive.

Errors: :class:`RemoteProtocolError` (the peer broke the rules) and :class:`LocalProtocolError`
(our own misuse), in :mod:`protocol.errors`. Nothing here performs I/O or imports trio, socket
or libvirt.
"""

from protocol.codec import decode_body, encode_body
from protocol.connection import Connection, ConnectionEvent
from protocol.errors import (
    BodyError,
    FrameError,
    HeaderError,
    LinkError,
    LocalProtocolError,
    MessageTooLarge,
    ProtocolError,
    RemoteProtocolError,
    SessionError,
    StartupRequired,
    TLSError,
    UnexpectedResponse,
)
from protocol.header import Flags, Header, Version
from protocol.link import HandshakeComplete, Link, LinkClosed, MessageReceived
from protocol.model import Answer, Command, Message, UnknownMessage
from protocol.session import Request, Response, Role, Session

__all__ = [
    "Answer",
    "BodyError",
    "Command",
    "Connection",
    "ConnectionEvent",
    "Flags",
    "FrameError",
    "HandshakeComplete",
    "Header",
    "HeaderError",
    "Link",
    "LinkClosed",
    "LinkError",
    "LocalProtocolError",
    "Message",
    "MessageReceived",
    "MessageTooLarge",
    "ProtocolError",
    "RemoteProtocolError",
    "Request",
    "Response",
    "Role",
    "Session",
    "SessionError",
    "StartupRequired",
    "TLSError",
    "UnexpectedResponse",
    "UnknownMessage",
    "Version",
    "decode_body",
    "encode_body",
]
