"""What the daemon reads of PEM certificates, without ``cryptography``.

An idle agent checks its certificate at every registration and once a day; importing
``cryptography`` for that would cost the daemon ~10 MiB for its whole life (issue 13).
Validation is OpenSSL's, through the ``ssl`` module (:mod:`agent.certs.verify`); this
module only splits PEM text into DER blocks and reads the few fields messages and metrics
need: the dates, the subject and issuer, the key's algorithm. It walks the DER structure
of RFC 5280 and refuses anything that is not a well-formed certificate; it never decides
whether a certificate is trusted.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re

from attrs import frozen

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.S)

# Object identifiers (DER content octets) the agent names.
_RSA = bytes.fromhex("2a864886f70d010101")  # 1.2.840.113549.1.1.1 rsaEncryption
_EC = bytes.fromhex("2a8648ce3d0201")  # 1.2.840.10045.2.1 id-ecPublicKey
# RFC 4514's short names, and the e-mail address OpenSSL prints by name.
_NAMES = {
    "2.5.4.3": "CN",
    "2.5.4.6": "C",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.9": "STREET",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "0.9.2342.19200300.100.1.1": "UID",
    "0.9.2342.19200300.100.1.25": "DC",
}
_STRING_TAGS = {0x0C: "utf-8", 0x13: "ascii", 0x16: "ascii", 0x14: "latin-1", 0x1E: "utf-16-be"}


class CertificateError(Exception):
    """A certificate, key or chain is unusable; the message says why (never key material
    or PEM text)."""


class _Malformed(Exception):
    pass


@frozen
class CertInfo:
    """The fields of one certificate that the agent reports."""

    der: bytes
    subject: str  # RFC 4514, as ``openssl x509 -nameopt rfc2253`` prints it
    issuer: str
    subject_der: bytes  # for matching issuers to subjects exactly
    issuer_der: bytes
    not_before: dt.datetime
    not_after: dt.datetime
    key_algorithm: str  # "RSA", "EC" or the dotted OID

    @property
    def self_issued(self) -> bool:
        return self.subject_der == self.issuer_der


def pem_blocks(data: bytes) -> list[tuple[str, bytes]]:
    """Every complete PEM block of ``data`` as (label, the base64 body's raw bytes)."""
    return [(m.group(1).decode("ascii"), m.group(2)) for m in _PEM_BLOCK.finditer(data)]


def pem_encode(label: str, der: bytes) -> bytes:
    body = base64.b64encode(der)
    lines = b"\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    return b"-----BEGIN %s-----\n%s\n-----END %s-----\n" % (label.encode(), lines, label.encode())


def decode_body(body: bytes) -> bytes:
    """The DER of a PEM block's body; ValueError if it is not plain base64 (a block with
    RFC 1421 headers, such as an encrypted key's, is not)."""
    try:
        return base64.b64decode(b"".join(body.split()), validate=True)
    except binascii.Error as exc:
        raise ValueError(str(exc)) from None


def is_one_der_sequence(der: bytes) -> bool:
    """True when ``der`` is exactly one DER SEQUENCE (what a certificate is)."""
    if len(der) < 2 or der[0] != 0x30:
        return False
    first = der[1]
    if first < 0x80:
        return len(der) == 2 + first
    size = first & 0x7F
    if size == 0 or size > 4 or len(der) < 2 + size:
        return False
    return len(der) == 2 + size + int.from_bytes(der[2 : 2 + size], "big")


def certificates(pem: bytes, what: str) -> list[CertInfo]:
    """Every CERTIFICATE block of ``pem``, read; CertificateError naming ``what``."""
    if not pem or not pem.strip():
        raise CertificateError(f"{what} is empty")
    found = []
    for label, body in pem_blocks(pem):
        if label != "CERTIFICATE":
            continue  # a chain file may carry other blocks; only certificates count
        try:
            found.append(read_certificate(decode_body(body)))
        except ValueError:
            raise CertificateError(f"{what} is not a PEM certificate") from None
    if not found:
        if b"-----BEGIN CERTIFICATE-----" in pem or not pem_blocks(pem):
            raise CertificateError(f"{what} is not a PEM certificate")
        raise CertificateError(f"{what} holds no certificate")
    return found


def read_certificate(der: bytes) -> CertInfo:
    """The reported fields of one DER certificate; ValueError if it is malformed."""
    try:
        cert, rest = _tlv(der, 0, 0x30)
        if rest != len(der):
            raise _Malformed
        tbs, _ = _tlv(der, cert.start, 0x30)
        fields = list(_children(der, tbs.start, tbs.end))
        if fields and fields[0].tag == 0xA0:  # [0] EXPLICIT version
            fields = fields[1:]
        if len(fields) < 6:
            raise _Malformed
        _serial, _algorithm, issuer, validity, subject, spki = fields[:6]
        if not all(f.tag == 0x30 for f in (issuer, validity, subject, spki)):
            raise _Malformed
        start, end = list(_children(der, validity.start, validity.end))
        algorithm = _children(der, spki.start, spki.end)[0]
        oid = _children(der, algorithm.start, algorithm.end)[0]
        if oid.tag != 0x06:
            raise _Malformed
        oid_bytes = der[oid.start : oid.end]
        return CertInfo(
            der=der,
            subject=_rfc4514(der, subject),
            issuer=_rfc4514(der, issuer),
            subject_der=der[subject.header : subject.end],
            issuer_der=der[issuer.header : issuer.end],
            not_before=_time(der, start),
            not_after=_time(der, end),
            key_algorithm={_RSA: "RSA", _EC: "EC"}.get(oid_bytes) or _dotted(oid_bytes),
        )
    except (_Malformed, IndexError, ValueError):
        raise ValueError("not a DER certificate") from None


@frozen
class _Node:
    tag: int
    header: int  # where the tag is
    start: int  # where the content is
    end: int


def _tlv(der: bytes, at: int, tag: int | None = None) -> tuple[_Node, int]:
    """The node at ``at`` and the offset after it (DER: definite, minimal lengths)."""
    node_tag, length_byte = der[at], der[at + 1]
    if tag is not None and node_tag != tag:
        raise _Malformed
    if length_byte < 0x80:
        start, length = at + 2, length_byte
    else:
        size = length_byte & 0x7F
        if size == 0 or size > 4:
            raise _Malformed
        start = at + 2 + size
        length = int.from_bytes(der[at + 2 : start], "big")
    end = start + length
    if end > len(der):
        raise _Malformed
    return _Node(node_tag, at, start, end), end


def _children(der: bytes, start: int, end: int) -> list[_Node]:
    out, at = [], start
    while at < end:
        node, at = _tlv(der, at)
        if at > end:
            raise _Malformed
        out.append(node)
    return out


def _time(der: bytes, node: _Node) -> dt.datetime:
    text = der[node.start : node.end].decode("ascii")
    if node.tag == 0x17 and len(text) == 13 and text.endswith("Z"):  # UTCTime YYMMDDHHMMSSZ
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"  # RFC 5280 4.1.2.5.1
    elif not (node.tag == 0x18 and len(text) == 15 and text.endswith("Z")):
        raise _Malformed
    return dt.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=dt.UTC)


def _dotted(oid: bytes) -> str:
    arcs, value = [], 0
    for byte in oid:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


def _rfc4514(der: bytes, name: _Node) -> str:
    """A Name as RFC 4514 writes it: the last RDN first, ``+`` within an RDN."""
    rdns = []
    for rdn in _children(der, name.start, name.end):
        parts = []
        for pair in _children(der, rdn.start, rdn.end):
            oid, value = _children(der, pair.start, pair.end)
            key = _dotted(der[oid.start : oid.end])
            raw = der[value.start : value.end]
            encoding = _STRING_TAGS.get(value.tag)
            text = raw.decode(encoding, "replace") if encoding else "#" + raw.hex()
            parts.append(f"{_NAMES.get(key, key)}={_escape(text) if encoding else text}")
        rdns.append("+".join(parts))
    return ",".join(reversed(rdns))


def _escape(value: str) -> str:
    """RFC 4514 section 2.4: the characters that must be escaped, and no others."""
    out = re.sub(r'([,+"\\<>;])', r"\\\1", value)
    if out.startswith(("#", " ")):
        out = "\\" + out
    if out.endswith(" "):
        out = out[:-1] + "\\ "
    return out
