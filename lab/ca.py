"""A lab certificate authority, made the way CloudStack's root CA provider makes one.

The Java MS generates a self-signed root CA and presents that very certificate as its TLS
server certificate on port 8250; agents trust it and get their own certificates signed by
it. Facts from CloudStack's ``RootCAProvider`` and ``CertUtils.generateV3Certificate``:

* root CA: RSA of 2 x ``ca.framework.cert.keysize`` (2048) = 4096 bits, SHA256withRSA, a
  64-bit random serial, valid from 12 hours ago for 30 years, subject = issuer =
  ``CN=ca.cloudstack.apache.org``; extensions basicConstraints CA:true (critical), keyUsage
  keyCertSign | cRLSign **only** (critical), subjectKeyIdentifier;
* host certificates: RSA 2048, valid from 12 hours ago for ``validityDays`` (365), subject
  from the CSR, extensions authorityKeyIdentifier, subjectKeyIdentifier and the SANs (IP
  addresses, then DNS names): **no** basicConstraints, keyUsage or extendedKeyUsage.

A CA made otherwise hides problems a real MS shows (issue 9: OpenSSL refuses the
keyCertSign-only server certificate unless the agent trusts it explicitly), so
:meth:`LabCA.load` refuses a CA on disk that is not made this way. Private keys are written
with mode 0600 and never logged.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
import ssl
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

from attrs import field, frozen
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from agent.fsutil import atomic_write

KEY_FILE: Final = "ca.key"
CERT_FILE: Final = "ca.crt"
DEFAULT_CA_NAME: Final = "ca.cloudstack.apache.org"
# The lab's CA directory under its workdir. Not "ca": that directory holds the EC CA of
# checkouts from before issue 9, which other checkouts on the machine may still use.
LAB_CA_DIRNAME: Final = "root-ca"
CA_KEY_BITS: Final = 4096  # 2 x ca.framework.cert.keysize
HOST_KEY_BITS: Final = 2048  # ca.framework.cert.keysize
_CA_VALIDITY: Final = dt.timedelta(days=30 * 365)
_BACKDATE: Final = dt.timedelta(hours=12)  # CertUtils: notBefore = now - 12 h
_CA_KEY_USAGE: Final = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


class CAError(Exception):
    """The CA files are missing, inconsistent, or a CSR is unusable."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _serial() -> int:
    return secrets.randbits(64) or 1  # CertUtils: new BigInteger(64, SecureRandom)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def san_entries(names: Iterable[str]) -> list[x509.GeneralName]:
    """IP addresses first, then DNS names, each once (CertUtils' order)."""
    ips: list[x509.GeneralName] = []
    dns: list[x509.GeneralName] = []
    for name in names:
        if not name:
            continue
        try:
            entry: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(name))
            target = ips
        except ValueError:
            entry, target = x509.DNSName(name), dns
        if entry not in target:
            target.append(entry)
    return ips + dns


def not_cloudstack_made(cert: x509.Certificate) -> list[str]:
    """How ``cert`` differs from a root CA certificate CloudStack makes (empty: it does not)."""
    problems = []
    if not isinstance(cert.public_key(), rsa.RSAPublicKey):
        problems.append(f"key is {type(cert.public_key()).__name__}, not RSA")
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
        if not usage.critical or usage.value != _CA_KEY_USAGE:
            problems.append("keyUsage is not exactly keyCertSign|cRLSign (critical)")
    except x509.ExtensionNotFound:
        problems.append("no keyUsage")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        if not constraints.value.ca:
            problems.append("basicConstraints is not CA:true")
    except x509.ExtensionNotFound:
        problems.append("no basicConstraints")
    if cert.subject != cert.issuer:
        problems.append("not self-signed")
    return problems


@frozen
class LabCA:
    """A root CA on disk: ``ca.key`` (0600) and ``ca.crt`` in ``directory``."""

    directory: Path
    _key: rsa.RSAPrivateKey = field(repr=False)
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
    def create(
        cls,
        directory: Path,
        common_name: str = DEFAULT_CA_NAME,
        *,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> LabCA:
        """A new root CA; dates other than CloudStack's only to test refusals."""
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = rsa.generate_private_key(public_exponent=65537, key_size=CA_KEY_BITS)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = _now()
        start = not_before or now - _BACKDATE
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(_serial())
            .not_valid_before(start)
            .not_valid_after(not_after or now + _CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            # No digitalSignature, although this is also the TLS server certificate:
            # that is how CloudStack makes it, and what agents must accept.
            .add_extension(_CA_KEY_USAGE, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
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
        problems = not_cloudstack_made(cert)
        if problems or not isinstance(key, rsa.RSAPrivateKey):
            raise CAError(
                f"the CA in {directory} is not made the way CloudStack makes its root CA "
                f"({'; '.join(problems) or 'the key is not RSA'}): it was made by an older "
                f"version of the lab; remove {directory} to get a new one (whatever trusts "
                "the old CA must then get the new one)"
            )
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
        # What CloudStack puts in a host certificate, and nothing more: no keyUsage, no
        # extendedKeyUsage, no basicConstraints (libvirt, QEMU and OpenSSL accept that).
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(_serial())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM)

    def sign_csr(
        self, csr_pem: bytes, *, extra_sans: Sequence[str] = (), validity_days: int = 365
    ) -> bytes:
        """A PEM certificate for the CSR: its subject; its IP and DNS SANs plus
        ``extra_sans`` (the MS adds the host's names and addresses), IPs first."""
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
            requested = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            requested = x509.SubjectAlternativeName([])
        names = [*extra_sans]
        names += [str(ip) for ip in requested.get_values_for_type(x509.IPAddress)]
        names += requested.get_values_for_type(x509.DNSName)
        now = _now()
        return self._leaf(
            csr.subject,
            public_key,
            san_entries(names),
            now - _BACKDATE,
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
        """(key PEM, certificate PEM), an RSA key as CloudStack makes for a host; pass
        dates in the past for an expired certificate."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=HOST_KEY_BITS)
        now = _now()
        start = not_before or now - _BACKDATE
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
