"""The 40-byte header that starts every request and response (all fields big-endian)."""

from __future__ import annotations

import enum
import struct
from typing import Final

from attrs import frozen

from protocol.errors import HeaderError, LocalProtocolError

HEADER_SIZE: Final = 40
_LAYOUT: Final = struct.Struct(">BBHqiqqq")


class Version(enum.IntEnum):
    """Java enum ordinals. Senders always write V1; v2 is rejected as unsupported."""

    V1 = 0
    V2 = 1
    V3 = 2


class Flags(enum.IntFlag):
    NONE = 0
    REQUEST = 0x01
    STOP_ON_ERROR = 0x02
    IN_SEQUENCE = 0x04
    FROM_SERVER = 0x20
    CONTROL = 0x40
    COMPRESSED = 0x80


_KNOWN_FLAGS: Final = int(
    Flags.REQUEST
    | Flags.STOP_ON_ERROR
    | Flags.IN_SEQUENCE
    | Flags.FROM_SERVER
    | Flags.CONTROL
    | Flags.COMPRESSED
)
# Flags a response inherits from its request (Request.java's Response constructor).
_COPIED_TO_RESPONSE: Final = Flags.STOP_ON_ERROR | Flags.IN_SEQUENCE

_I32 = (-(2**31), 2**31 - 1)
_I64 = (-(2**63), 2**63 - 1)


@frozen
class Header:
    flags: Flags
    sequence: int
    length: int  # body length before compression
    mgmt_id: int
    agent_id: int
    via: int
    version: Version = Version.V1

    @property
    def is_request(self) -> bool:
        return bool(self.flags & Flags.REQUEST)

    @property
    def compressed(self) -> bool:
        return bool(self.flags & Flags.COMPRESSED)

    def encode(self) -> bytes:
        """The 40 bytes; LocalProtocolError for a field out of range (ours to fix)."""
        for name, value, (low, high) in (
            ("sequence", self.sequence, _I64),
            ("length", self.length, _I32),
            ("mgmt_id", self.mgmt_id, _I64),
            ("agent_id", self.agent_id, _I64),
            ("via", self.via, _I64),
        ):
            if not low <= value <= high:
                raise LocalProtocolError(f"header field {name}={value} is out of range")
        if self.length < 0:
            raise LocalProtocolError(f"header length {self.length} is negative")
        return _LAYOUT.pack(
            int(self.version),
            0,
            int(self.flags),
            self.sequence,
            self.length,
            self.mgmt_id,
            self.agent_id,
            self.via,
        )

    @classmethod
    def decode(cls, data: bytes) -> Header:
        """Parse the first 40 bytes of ``data`` (the body may follow)."""
        if len(data) < HEADER_SIZE:
            raise HeaderError(f"truncated header: {len(data)} of {HEADER_SIZE} bytes")
        raw_version, _reserved, flags, seq, length, mgmt_id, agent_id, via = _LAYOUT.unpack_from(
            data
        )
        if raw_version == Version.V2:
            raise HeaderError("header version v2 is no longer supported")
        if raw_version not in (Version.V1, Version.V3):
            raise HeaderError(f"unknown header version byte 0x{raw_version:02x}")
        if flags & ~_KNOWN_FLAGS:
            raise HeaderError(f"unknown header flag bits 0x{flags & ~_KNOWN_FLAGS:04x}")
        if length < 0:
            raise HeaderError(f"negative body length {length}")
        version = Version(raw_version)
        if version == Version.V3:
            via = agent_id  # v3 headers do not carry via; the Java reader uses agentId
        return cls(
            flags=Flags(flags),
            sequence=seq,
            length=length,
            mgmt_id=mgmt_id,
            agent_id=agent_id,
            via=via,
            version=version,
        )

    def response_flags(self) -> Flags:
        """Flags of the response to this request, before the COMPRESSED bit is decided."""
        flags = self.flags & _COPIED_TO_RESPONSE
        if not self.flags & Flags.FROM_SERVER:
            flags |= Flags.FROM_SERVER
        return flags

    def response_header(self, length: int, *, compressed: bool) -> Header:
        """The header of a response to this request: same sequence and ids, derived flags."""
        flags = self.response_flags()
        if compressed:
            flags |= Flags.COMPRESSED
        return Header(
            flags=flags,
            sequence=self.sequence,
            length=length,
            mgmt_id=self.mgmt_id,
            agent_id=self.agent_id,
            via=self.via,
        )
