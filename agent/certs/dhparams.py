"""QEMU's Diffie-Hellman parameters: ``/etc/pki/qemu/dh-params.pem`` holds a standard group.

Without that file QEMU generates fresh parameters each time it creates TLS credentials, i.e.
at every incoming native-TLS migration: 0.1-0.3 s of CPU on the destination, paid inside the
migration. Generating our own safe prime instead would take minutes on a host. RFC 7919's
ffdhe3072 is a published, vetted safe-prime group (generator 2) and stronger than GnuTLS's
default minimum; nothing about it is secret, so every host may share it.

The file is written atomically and only when missing or unusable: an existing valid file (an
operator's own parameters included) is left alone, so a certificate import costs one read.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Final

import structlog

from agent.fsutil import atomic_write

log = structlog.get_logger("agent.certs.dhparams")

DH_PARAMS: Final = "etc/pki/qemu/dh-params.pem"  # relative to the system root
MIN_BITS: Final = 2048  # RFC 7919's smallest group; GnuTLS's "medium" level
GROUP_NAME: Final = "RFC 7919 ffdhe3072"
# PKCS#3 DHParameter {p, g = 2} of RFC 7919 appendix A.2 (openssl genpkey -genparam
# -algorithm DH -pkeyopt group:ffdhe3072); tests check p against the RFC's formula.
FFDHE3072_PEM: Final = b"""-----BEGIN DH PARAMETERS-----
MIIBiAKCAYEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEfz9zeNVs7ZRkDW7w09N75nAI4YbRvydbmyQd62R0mkff3
7lmMsPrBhtkcrv4TCYUTknC0EwyTvEN5RPT9RFLi103TZPLiHnH1S/9croKrnJ32
nuhtK8UiNjoNq8Uhl5sN6todv5pC1cRITgq80Gv6U93vPBsg7j/VnXwl5B0rZsYu
N///////////AgEC
-----END DH PARAMETERS-----
"""
# GnuTLS (QEMU's TLS library) reads PKCS#3 only, under this header.
_BEGIN: Final = "-----BEGIN DH PARAMETERS-----"
_END: Final = "-----END DH PARAMETERS-----"
_SEQUENCE, _INTEGER = 0x30, 0x02


def _der(data: bytes, pos: int, tag: int) -> tuple[bytes, int]:
    """The contents of the DER element of type ``tag`` at ``pos``, and the position after."""
    if pos + 2 > len(data) or data[pos] != tag:
        raise ValueError("malformed PKCS#3 DH parameters")
    length, pos = data[pos + 1], pos + 2
    if length & 0x80:  # long form: the next (length & 0x7f) bytes hold the length
        count = length & 0x7F
        if not 0 < count <= 4 or pos + count > len(data):
            raise ValueError("malformed PKCS#3 DH parameters")
        length, pos = int.from_bytes(data[pos : pos + count], "big"), pos + count
    if pos + length > len(data):
        raise ValueError("truncated PKCS#3 DH parameters")
    return data[pos : pos + length], pos + length


def dh_numbers(pem: bytes) -> tuple[int, int]:
    """(p, g) of PEM PKCS#3 DH parameters; ValueError when it is not that.

    DHParameter ::= SEQUENCE { prime INTEGER, base INTEGER, privateValueLength INTEGER
    OPTIONAL }. Read here rather than by ``cryptography``, which deprecates finite-field DH.
    """
    text = pem.decode("ascii", "replace")
    start, end = text.find(_BEGIN), text.find(_END)
    if start < 0 or end < start:
        raise ValueError(f"not PEM DH parameters (GnuTLS needs a '{_BEGIN}' block)")
    try:
        der = base64.b64decode("".join(text[start + len(_BEGIN) : end].split()), validate=True)
    except binascii.Error:
        raise ValueError("DH parameters: bad base64") from None
    body, after = _der(der, 0, _SEQUENCE)
    if after != len(der):
        raise ValueError("malformed PKCS#3 DH parameters")
    values, pos = [], 0
    while pos < len(body):
        raw, pos = _der(body, pos, _INTEGER)
        values.append(int.from_bytes(raw, "big", signed=True))
    if len(values) not in (2, 3) or min(values) <= 0:
        raise ValueError("malformed PKCS#3 DH parameters")
    return values[0], values[1]


def _probably_prime(n: int) -> bool:
    """One Miller-Rabin round, base 2: catches a damaged prime (0.1 s at 3072 bits)."""
    if n < 5 or n % 2 == 0:
        return False
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    x = pow(2, d, n)
    if x in (1, n - 1):
        return True
    for _ in range(s - 1):
        x = pow(x, 2, n)
        if x == n - 1:
            return True
    return False


def problem(pem: bytes) -> str | None:
    """Why ``pem`` is no usable DH parameters file for QEMU, or None when it is."""
    if pem == FFDHE3072_PEM:
        return None
    try:
        p, g = dh_numbers(pem)
    except ValueError as exc:
        return str(exc)
    if p.bit_length() < MIN_BITS:
        return f"a {p.bit_length()}-bit prime is too weak (at least {MIN_BITS} bits)"
    if not 1 < g < p - 1:
        return f"generator {g} is out of range"
    if not _probably_prime(p):
        return "the modulus is not prime (damaged file?)"
    return None


def ensure_dh_params(root: Path = Path("/")) -> Path | None:
    """Make ``root``/etc/pki/qemu/dh-params.pem hold usable parameters; the path if written.

    Left alone when it already does; otherwise (missing, empty, damaged, weak) replaced
    atomically by the standard group, mode 0644 (public values). Raises OSError.
    """
    path = root / DH_PARAMS
    reason = needs_dh_params(root)
    if reason is None:
        return None
    atomic_write(path, FFDHE3072_PEM, mode=0o644)
    say = log.info if reason == "missing" else log.warning  # a file was there: replaced
    say("QEMU DH parameters written", path=str(path), group=GROUP_NAME, was=reason)
    return path


def needs_dh_params(root: Path = Path("/")) -> str | None:
    """Why :func:`ensure_dh_params` would write the file (for dry runs), or None."""
    try:
        return problem((root / DH_PARAMS).read_bytes())
    except FileNotFoundError:
        return "missing"  # a dangling symlink too
