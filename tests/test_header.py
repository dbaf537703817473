from __future__ import annotations

import struct

import pytest

from protocol.errors import HeaderError, LocalProtocolError
from protocol.header import Flags, Header, Version


def test_worked_example_bytes() -> None:
    # wire.md section 4: agent 5, ping, sequence 7, flags 0x0003, 224-byte body.
    header = Header(
        flags=Flags.REQUEST | Flags.STOP_ON_ERROR,
        sequence=7,
        length=224,
        mgmt_id=-1,
        agent_id=5,
        via=5,
    )
    expected = bytes.fromhex(
        "00 00 00 03 0000000000000007 000000e0 ffffffffffffffff 0000000000000005 0000000000000005"
    )
    assert header.encode() == expected
    assert expected == struct.pack(">BBhqiqqq", 0, 0, 3, 7, 224, -1, 5, 5)
    assert Header.decode(expected) == header


def test_version_rules() -> None:
    raw = bytearray(Header(Flags.REQUEST, 1, 0, -1, 1, 9).encode())
    raw[0] = 1
    with pytest.raises(HeaderError, match="v2 is no longer supported"):
        Header.decode(bytes(raw))
    raw[0] = 7
    with pytest.raises(HeaderError, match="unknown header version"):
        Header.decode(bytes(raw))
    raw[0] = 2  # v3: via is not read, it equals agentId
    decoded = Header.decode(bytes(raw))
    assert decoded.version is Version.V3
    assert decoded.via == 1


def test_truncated_and_bad_fields() -> None:
    good = Header(Flags.REQUEST, 1, 10, -1, 1, 1).encode()
    with pytest.raises(HeaderError, match="truncated header: 39 of 40"):
        Header.decode(good[:39])
    with pytest.raises(HeaderError, match="negative body length"):
        Header.decode(good[:12] + struct.pack(">i", -5) + good[16:])
    with pytest.raises(HeaderError, match="unknown header flag bits 0x0008"):
        Header.decode(good[:2] + struct.pack(">H", 0x09) + good[4:])


@pytest.mark.parametrize(
    ("request_flags", "response_flags"),
    [
        (0x23, 0x02),  # MS command -> agent answer
        (0x27, 0x06),  # ReadyCommand (IN_SEQUENCE) -> answer keeps IN_SEQUENCE
        (0x03, 0x22),  # agent ping -> MS answer
        (0x01, 0x20),  # agent startup -> MS answer
        (0x41 | 0x80, 0x20),  # CONTROL and COMPRESSED are not copied
    ],
)
def test_response_flags_derive_from_request(request_flags: int, response_flags: int) -> None:
    request = Header(Flags(request_flags), 1 << 48, 100, 77, 5, 5)
    response = request.response_header(50, compressed=False)
    assert int(response.flags) == response_flags
    assert (response.sequence, response.mgmt_id, response.agent_id, response.via) == (
        1 << 48,
        77,
        5,
        5,
    )
    assert response.response_header(1, compressed=True).flags & Flags.COMPRESSED


def test_out_of_range_values_refuse_to_encode() -> None:
    # Our own header: a local error, not one of the peer's.
    with pytest.raises(LocalProtocolError, match="sequence"):
        Header(Flags.REQUEST, 2**63, 0, -1, 0, 0).encode()
