"""New keys and CSRs with ``cryptography`` (imported only by the certificate commands).

Validation is OpenSSL's (agent.certs.verify): the daemon never loads ``cryptography`` to
check a certificate.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
)
from cryptography.x509.oid import NameOID


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
