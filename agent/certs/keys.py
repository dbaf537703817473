"""Keys, CSRs and certificate validation with ``cryptography``.

Errors say what is wrong with a certificate (chain, key, dates) and never include key
material or PEM text.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence

from attrs import frozen
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
)
from cryptography.x509.oid import NameOID


class CertificateError(Exception):
    """A certificate, key or chain is unusable; the message says why."""


@frozen
class ValidCertificate:
    subject: str
    not_before: dt.datetime
    not_after: dt.datetime
    ip_sans: tuple[str, ...]
    dns_sans: tuple[str, ...]


def load_certificates(pem: bytes, what: str) -> list[x509.Certificate]:
    if not pem or not pem.strip():
        raise CertificateError(f"{what} is empty")
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise CertificateError(f"{what} is not a PEM certificate") from None
    if not certs:
        raise CertificateError(f"{what} holds no certificate")
    return certs


def load_private_key(pem: bytes, what: str = "the private key") -> CertificateIssuerPrivateKeyTypes:
    if not pem or not pem.strip():
        raise CertificateError(f"{what} is empty")
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise CertificateError(f"{what} is not an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{what} is neither an RSA nor an EC key")
    return key


def _public_der(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _check_dates(cert: x509.Certificate, what: str, now: dt.datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise CertificateError(f"{what} is not valid before {cert.not_valid_before_utc:%Y-%m-%d}")
    if now > cert.not_valid_after_utc:
        raise CertificateError(f"{what} expired on {cert.not_valid_after_utc:%Y-%m-%d}")


def _verify_chain(
    leaf: x509.Certificate, bundle: Sequence[x509.Certificate], now: dt.datetime
) -> None:
    """Walk from ``leaf`` up to a self-signed certificate of ``bundle``."""
    current, depth = leaf, 0
    while depth < 8:
        issuers = [c for c in bundle if c.subject == current.issuer]
        for issuer in issuers:
            try:
                current.verify_directly_issued_by(issuer)
            except (ValueError, TypeError, InvalidSignature):
                continue
            _check_dates(issuer, f"CA certificate {issuer.subject.rfc4514_string()}", now)
            if issuer.subject == issuer.issuer:
                return  # reached a root we trust
            current, depth = issuer, depth + 1
            break
        else:
            raise CertificateError(
                "the certificate is not signed by the given CA "
                f"(issuer {current.issuer.rfc4514_string()} not found or signature invalid)"
            )
    raise CertificateError("the certificate chain is too long")


def validate(
    cert_pem: bytes,
    key_pem: bytes,
    ca_pem: bytes,
    *,
    now: dt.datetime | None = None,
) -> ValidCertificate:
    """The certificate parses, matches the key, chains to the CA, and is within its dates."""
    now = now or dt.datetime.now(dt.UTC)
    certs = load_certificates(cert_pem, "the certificate")
    leaf = certs[0]
    key = load_private_key(key_pem)
    if _public_der(leaf.public_key()) != _public_der(key.public_key()):
        raise CertificateError("the certificate does not match the private key")
    bundle = load_certificates(ca_pem, "the CA bundle") + certs[1:]
    _check_dates(leaf, "the certificate", now)
    _verify_chain(leaf, bundle, now)
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        ips = tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
        names = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        ips, names = (), ()
    return ValidCertificate(
        subject=leaf.subject.rfc4514_string(),
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        ip_sans=ips,
        dns_sans=names,
    )


def new_private_key() -> rsa.RSAPrivateKey:
    # RSA 2048, as CloudStack's CA framework issues (ca.framework.cert.keysize).
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_key_pem(key: CertificateIssuerPrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_csr(
    key: CertificateIssuerPrivateKeyTypes, fqdn: str, names: Sequence[str], ips: Sequence[str]
) -> bytes:
    """CSR with CN = the FQDN (and CloudStack's OU/O), SANs = host names and local IPs."""
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, fqdn),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "cloudstack"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cloudstack"),
        ]
    )
    sans: list[x509.GeneralName] = []
    for name in dict.fromkeys([fqdn, *names]):
        if name:
            sans.append(x509.DNSName(name))
    for ip in dict.fromkeys(ips):
        sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)
