"""Validation of a certificate set by OpenSSL, as the host's TLS peers will judge it.

A certificate set is valid when a TLS handshake between the set and itself succeeds, with
both sides verifying the other against the CA bundle alone: a client (our certificate
and key, trusting cloud.ca.crt) and a server (the same) complete a mutually authenticated
TLS handshake over memory BIOs. That is what libvirtd, QEMU and the management server do
with this certificate, so OpenSSL checks, as they would:

* the private key matches the certificate (loading them into a context);
* the chain, from the certificate (and any intermediates sent with it) to a self-signed
  certificate of the CA bundle, every signature on the way;
* the dates of every certificate of that chain, against the clock;
* that the CAs are CAs, and the certificate may serve both TLS clients and servers.

Why not ``cryptography``: it costs the daemon ~10 MiB for its whole life, and the daemon
validates at every registration and migration; OpenSSL is loaded anyway (``ssl``), and a
handshake takes milliseconds (a subprocess would take a second of CPU each time). The
certificate's own dates are checked first, from its DER (agent.certs.certinfo), to say
when it expired; everything else is OpenSSL's verdict, its reason in the message. The
key never touches a disk: OpenSSL reads it from an anonymous memory file (memfd).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import ssl
from collections.abc import Iterator, Sequence

from attrs import frozen

from agent.certs.certinfo import (
    CertificateError,
    CertInfo,
    certificates,
    decode_body,
    pem_blocks,
    pem_encode,
)

_KEY_LABELS = ("PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY")
# X509_V_ERR_* codes (openssl/x509_vfy.h), as SSLCertVerificationError.verify_code has them.
_NOT_SIGNED = {2, 4, 6, 7, 18, 19, 20, 21, 24}
_NOT_YET_VALID, _EXPIRED = 9, 10
_INVALID_PURPOSE = 26
_NOT_A_CA = {32, 37, 79}  # keyUsage without keyCertSign, basicConstraints CA:false or none
_TOO_WEAK = {66, 67, 68}  # key size or digest under OpenSSL's security level
_ROUNDS = 10  # a TLS 1.2/1.3 handshake needs two or three flights each way


@frozen
class ValidCertificate:
    subject: str
    not_before: dt.datetime
    not_after: dt.datetime
    ip_sans: tuple[str, ...]
    dns_sans: tuple[str, ...]


def validate(
    cert_pem: bytes, key_pem: bytes, ca_pem: bytes, *, now: dt.datetime | None = None
) -> ValidCertificate:
    """The certificate parses, matches the key, chains to the CA, and is within its dates
    (``now``: for the certificate's own dates; the chain is checked against the clock)."""
    chain = certificates(cert_pem, "the certificate")
    leaf = chain[0]
    key = _private_key(key_pem)
    if leaf.key_algorithm not in ("RSA", "EC"):
        raise CertificateError("the private key is neither an RSA nor an EC key")
    bundle = certificates(ca_pem, "the CA bundle")
    _check_dates(leaf, "the certificate", now or dt.datetime.now(dt.UTC))
    cert_file = b"".join(pem_encode("CERTIFICATE", c.der) for c in chain)
    ca_text = b"".join(pem_encode("CERTIFICATE", c.der) for c in bundle).decode("ascii")
    sans = _handshake(cert_file, key, ca_text, chain, bundle)
    return ValidCertificate(
        subject=leaf.subject,
        not_before=leaf.not_before,
        not_after=leaf.not_after,
        ip_sans=tuple(str(ipaddress.ip_address(v.strip())) for k, v in sans if k == "IP Address"),
        dns_sans=tuple(v for k, v in sans if k == "DNS"),
    )


def _private_key(pem: bytes) -> bytes:
    """The key's PEM block; refused when absent or encrypted (a daemon has no passphrase)."""
    if not pem or not pem.strip():
        raise CertificateError("the private key is empty")
    for label, body in pem_blocks(pem):
        if label in _KEY_LABELS:
            try:
                return pem_encode(label, decode_body(body))
            except ValueError:
                break  # RFC 1421 headers: an encrypted traditional key
    raise CertificateError("the private key is not an unencrypted PEM private key")


def _check_dates(cert: CertInfo, what: str, now: dt.datetime) -> None:
    if now < cert.not_before:
        raise CertificateError(f"{what} is not valid before {cert.not_before:%Y-%m-%d}")
    if now > cert.not_after:
        raise CertificateError(f"{what} expired on {cert.not_after:%Y-%m-%d}")


@contextlib.contextmanager
def _memory_files(*contents: bytes) -> Iterator[list[str]]:
    """Paths OpenSSL can open that read ``contents`` from anonymous memory."""
    fds: list[int] = []
    try:
        for data in contents:
            fd = os.memfd_create("kvm-agent-check", os.MFD_CLOEXEC)
            fds.append(fd)
            os.write(fd, data)
        yield [f"/proc/self/fd/{fd}" for fd in fds]
    finally:
        for fd in fds:
            os.close(fd)


def _context(server: bool, cert: str, key: str, ca_text: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # a certificate names its host, not what it talks to
    ctx.verify_mode = ssl.CERT_REQUIRED  # on the server side: a client certificate is required
    try:
        ctx.load_verify_locations(cadata=ca_text)
    except ssl.SSLError as exc:
        raise CertificateError(f"the CA bundle is unusable ({_reason(exc)})") from None
    try:
        # The callback only keeps OpenSSL from prompting on a terminal: keys are unencrypted.
        ctx.load_cert_chain(cert, key, password=lambda: b"")
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise CertificateError("the certificate does not match the private key") from None
        raise CertificateError(
            f"OpenSSL refuses the certificate with its key ({_reason(exc)})"
        ) from None
    return ctx


def _handshake(
    cert_file: bytes,
    key: bytes,
    ca_text: str,
    chain: Sequence[CertInfo],
    bundle: Sequence[CertInfo],
) -> tuple[tuple[str, str], ...]:
    """A mutually authenticated handshake of the set with itself; the subjectAltNames the
    client saw in the server's certificate (as ``SSLSocket.getpeercert`` gives them)."""
    with _memory_files(cert_file, key) as (cert_path, key_path):
        client = _context(False, cert_path, key_path, ca_text)
        server = _context(True, cert_path, key_path, ca_text)
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    ends = {
        "client": client.wrap_bio(c_in, c_out, server_side=False),
        "server": server.wrap_bio(s_in, s_out, server_side=True),
    }
    done: set[str] = set()
    for _ in range(_ROUNDS):
        for side, tls in ends.items():
            if side in done:
                continue
            try:
                tls.do_handshake()
                done.add(side)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLCertVerificationError as exc:
                # The client verifies our certificate as a server's, the server as a client's.
                role = "server" if side == "client" else "client"
                raise CertificateError(_verify_failure(exc, role, chain, bundle)) from None
            except ssl.SSLError as exc:
                raise CertificateError(
                    f"a TLS handshake with this certificate fails ({_reason(exc)})"
                ) from None
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if len(done) == 2:
            peer = ends["client"].getpeercert() or {}
            return tuple(peer.get("subjectAltName", ()))  # type: ignore[arg-type]
    raise CertificateError("a TLS handshake with this certificate does not complete")


def _verify_failure(
    exc: ssl.SSLCertVerificationError,
    role: str,
    chain: Sequence[CertInfo],
    bundle: Sequence[CertInfo],
) -> str:
    said = f"OpenSSL: {exc.verify_message}"
    code = exc.verify_code
    if code in _NOT_SIGNED:
        return f"the certificate is not signed by the given CA ({said})"
    if code in (_NOT_YET_VALID, _EXPIRED):
        # The certificate's own dates were checked before: a CA of its chain is out of date.
        now = dt.datetime.now(dt.UTC)
        for ca in _issuers(chain[0], [*chain[1:], *bundle]):
            if now > ca.not_after:
                return f"CA certificate {ca.subject} expired on {ca.not_after:%Y-%m-%d}"
            if now < ca.not_before:
                return f"CA certificate {ca.subject} is not valid before {ca.not_before:%Y-%m-%d}"
        return f"a certificate of the chain is out of its dates ({said})"
    if code == _INVALID_PURPOSE:
        return (
            f"the certificate may not serve as a TLS {role} certificate, which libvirt, QEMU "
            f"and the management server need it for (extended key usage; {said})"
        )
    if code in _NOT_A_CA:
        return f"a certificate of the chain is no CA (basicConstraints, keyUsage; {said})"
    if code in _TOO_WEAK:
        return f"a key or signature of the chain is too weak for OpenSSL ({said})"
    return f"the certificate chain does not verify ({said})"


def _issuers(leaf: CertInfo, candidates: Sequence[CertInfo]) -> Iterator[CertInfo]:
    """The certificates named as issuers from ``leaf`` up (by name; for messages only)."""
    seen: set[bytes] = set()
    current = leaf
    while not current.self_issued and current.issuer_der not in seen:
        seen.add(current.issuer_der)
        found = [c for c in candidates if c.subject_der == current.issuer_der]
        yield from found
        if not found:
            return
        current = found[0]


def _reason(exc: ssl.SSLError) -> str:
    # Only OpenSSL's reason: never the file content.
    return str(exc.reason or exc.__class__.__name__)
