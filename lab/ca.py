"""A lab certificate authority, as the CloudStack management server keeps one.

The Java MS generates a self-signed root CA and presents that very certificate as its TLS
server certificate on port 8250; agents trust it and get their own certificates signed by
it. This module does the same with ``cryptography``. Private keys are written with mode
0600 and never logged.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

from attrs import field, frozen
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.fsutil import atomic_write

KEY_FILE: Final = "ca.key"
CERT_FILE: Final = "ca.crt"
DEFAULT_CA_NAME: Final = "ca.cloudstack.apache.org"
_CA_VALIDITY: Final = dt.timedelta(days=3650)
_CLOCK_SKEW: Final = dt.timedelta(minutes=5)  # hosts' clocks are rarely exact

SigningKey = ec.EllipticCurvePrivateKey


class CAError(Exception):
    """The CA files are missing, inconsistent, or a CSR is unusable."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def san_entries(names: Iterable[str]) -> list[x509.GeneralName]:
    """IP address strings become IPAddress SANs, anything else a DNSName."""
    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


@frozen
class LabCA:
    """A root CA on disk: ``ca.key`` (0600) and ``ca.crt`` in ``directory``."""

    directory: Path
    _key: SigningKey = field(repr=False)
    certificate: x509.Certificate

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_path(self) -> Path:
        return self.directory / KEY_FILE

    @property
    def cert_path(self) -> Path:
        return self.directory / CERT_FILE

    # --- creating and loading -------------------------------------------------------

    @classmethod
    def create(cls, directory: Path, common_name: str = DEFAULT_CA_NAME) -> LabCA:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = _new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = _now()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + _CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            # digital_signature too: this certificate is also the TLS server certificate.
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        atomic_write(directory / KEY_FILE, _key_pem(key), mode=0o600)
        atomic_write(
            directory / CERT_FILE, cert.public_bytes(serialization.Encoding.PEM), mode=0o644
        )
        return cls(directory, key, cert)

    @classmethod
    def load(cls, directory: Path) -> LabCA:
        try:
            key_data = (directory / KEY_FILE).read_bytes()
            cert_data = (directory / CERT_FILE).read_bytes()
        except OSError as exc:
            raise CAError(f"cannot read the CA in {directory}: {exc.strerror or exc}") from None
        try:
            key = serialization.load_pem_private_key(key_data, password=None)
            cert = x509.load_pem_x509_certificate(cert_data)
        except (ValueError, TypeError) as exc:
            # The exception text never holds key material, only what was wrong.
            raise CAError(f"the CA in {directory} is unreadable: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CAError(f"{directory / KEY_FILE} is not an EC key")
        if key.public_key() != cert.public_key():
            raise CAError(f"{KEY_FILE} and {CERT_FILE} in {directory} do not belong together")
        return cls(directory, key, cert)

    @classmethod
    def load_or_create(cls, directory: Path) -> LabCA:
        has_key = (directory / KEY_FILE).exists()
        has_cert = (directory / CERT_FILE).exists()
        if has_key and has_cert:
            return cls.load(directory)
        if has_key or has_cert:
            # Never overwrite half a CA: agents may already trust the certificate.
            raise CAError(f"{directory} holds only one of {KEY_FILE} and {CERT_FILE}")
        return cls.create(directory)

    # --- issuing --------------------------------------------------------------------

    def _leaf(
        self,
        subject: x509.Name,
        public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
        sans: Sequence[x509.GeneralName],
        not_before: dt.datetime,
        not_after: dt.datetime,
    ) -> bytes:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    # RSA key exchange needs it; meaningless for EC keys.
                    key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM)

    def sign_csr(
        self, csr_pem: bytes, *, extra_sans: Sequence[str] = (), validity_days: int = 365
    ) -> bytes:
        """A PEM certificate for the CSR: its subject and SANs plus ``extra_sans``."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise CAError(f"unreadable CSR: {exc}") from None
        if not csr.is_signature_valid:
            raise CAError("the CSR's signature does not verify")
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise CAError(f"unsupported CSR key type {type(public_key).__name__}")
        try:
            requested = list(
                csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            )
        except x509.ExtensionNotFound:
            requested = []
        sans = list(requested)
        for entry in san_entries(extra_sans):
            if entry not in sans:
                sans.append(entry)
        now = _now()
        return self._leaf(
            csr.subject,
            public_key,
            sans,
            now - _CLOCK_SKEW,
            now + dt.timedelta(days=validity_days),
        )

    def issue(
        self,
        common_name: str,
        sans: Sequence[str] = (),
        validity_days: int = 365,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> tuple[bytes, bytes]:
        """(key PEM, certificate PEM) for tests; pass dates in the past for an expired one.

        RSA, as CloudStack issues: libvirt refuses a certificate whose key usage lacks
        keyEncipherment, which only an RSA key carries here.
        """
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = _now()
        start = not_before or now - _CLOCK_SKEW
        end = not_after or start + dt.timedelta(days=validity_days)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        cert = self._leaf(subject, key.public_key(), san_entries(sans), start, end)
        return _key_pem(key), cert

    def write_agent_set(self, cert_dir: Path, common_name: str, sans: Sequence[str] = ()) -> None:
        """An agent's cert.dir as CloudStack lays it out: cloud.ca.crt, cloud.crt, cloud.key."""
        key, cert = self.issue(common_name, sans=sans)
        cert_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(cert_dir / "cloud.ca.crt", self.cert_pem, mode=0o644)
        atomic_write(cert_dir / "cloud.key", key, mode=0o600)
        atomic_write(cert_dir / "cloud.crt", cert, mode=0o644)

    # --- TLS ------------------------------------------------------------------------

    def server_context(self, require_client_cert: bool = False) -> ssl.SSLContext:
        """The port-8250 context of the Java MS: the CA certificate is the server
        certificate, TLS 1.2 only, client certificates checked against this CA."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_path, self.key_path)
        ctx.load_verify_locations(cadata=self.cert_pem.decode("ascii"))
        # CloudStack's ca.plugin.root.auth.strictness defaults to false: a client
        # certificate is verified when presented but not demanded.
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
        return ctx
