"""Certificate validation by OpenSSL (agent.certs.verify) and what the agent reads of a
certificate without ``cryptography`` (agent.certs.certinfo): the same verdicts and messages
as before issue 13, stricter where the old walk was lax, and never ``cryptography`` in the
process that only checks."""

from __future__ import annotations

import base64
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.certs.certinfo import CertificateError, certificates, read_certificate
from agent.certs.verify import validate
from lab.ca import LabCA
from tests.agent_env import ROOT
from tests.cert_env import ONE_DAY, cloudstack_ca, expired, write_set

NOW = dt.datetime.now(dt.UTC)
AnyKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> LabCA:
    return cloudstack_ca(tmp_path_factory.mktemp("verify") / "ca")


def _key_pem(key: AnyKey, password: bytes | None = None) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption(),
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _cert(
    subject: x509.Name,
    key: AnyKey,
    issuer: x509.Name,
    issuer_key: rsa.RSAPrivateKey,
    *,
    ca: bool = False,
    start: dt.datetime = NOW - ONE_DAY,
    end: dt.datetime = NOW + 30 * ONE_DAY,
    eku: list[x509.ObjectIdentifier] | None = None,
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _cn(name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


def _ca_key(ca: LabCA) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(ca.key_path.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


# --- reading ----------------------------------------------------------------------------


def test_reads_what_cryptography_reads(ca: LabCA) -> None:
    odd = x509.Name(
        [
            x509.RelativeDistinguishedName(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Ex, Ample+Co"),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, '"quoted"'),
                ]
            ),
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COUNTRY_NAME, "FR")]),
            x509.RelativeDistinguishedName(
                [x509.NameAttribute(NameOID.LOCALITY_NAME, "#Besançon ")]
            ),
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "org")]),
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "ü;<x>=")]),
        ]
    )
    late = NOW.replace(microsecond=0) + 40 * 365 * ONE_DAY  # past 2050: GeneralizedTime
    certs = [
        ca.certificate,
        x509.load_pem_x509_certificate(ca.issue("kvm1.example.org", sans=("10.0.0.5",))[1]),
        _cert(odd, ec.generate_private_key(ec.SECP256R1()), odd, _ca_key(ca), end=late),
        _cert(_cn("ed"), ed25519.Ed25519PrivateKey.generate(), _cn("x"), _ca_key(ca)),
    ]
    for cert in certs:
        (info,) = certificates(_pem(cert), "test")
        assert info.subject == cert.subject.rfc4514_string()
        assert info.issuer == cert.issuer.rfc4514_string()
        assert info.not_before == cert.not_valid_before_utc
        assert info.not_after == cert.not_valid_after_utc
        assert info.der == cert.public_bytes(serialization.Encoding.DER)
    assert [certificates(_pem(c), "t")[0].key_algorithm for c in certs] == [
        "RSA",
        "RSA",
        "EC",
        "1.3.101.112",  # Ed25519
    ]


@pytest.mark.parametrize(
    ("pem", "message"),
    [
        (b"", "is empty"),
        (b"  \n", "is empty"),
        (b"-----BEGIN CERTIFICATE-----\nnope\n", "is not a PEM certificate"),
        (b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n", "not a PEM"),
        (b"-----BEGIN CERTIFICATE-----\n@@@@\n-----END CERTIFICATE-----\n", "not a PEM"),
        (b"-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n", "no certificate"),
    ],
)
def test_unreadable_certificates_are_refused(pem: bytes, message: str) -> None:
    with pytest.raises(CertificateError, match=message):
        certificates(pem, "the certificate")


def test_truncated_or_padded_der_is_refused(ca: LabCA) -> None:
    der = ca.certificate.public_bytes(serialization.Encoding.DER)
    for bad in (der[:-1], der + b"\x00", der[:40]):
        block = b"-----BEGIN CERTIFICATE-----\n" + _b64(bad) + b"\n-----END CERTIFICATE-----\n"
        with pytest.raises(CertificateError, match="not a PEM certificate"):
            certificates(block, "x")


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data)


# --- validating -------------------------------------------------------------------------


def test_accepts_cloudstack_sets_ec_keys_and_chains(ca: LabCA) -> None:
    key, cert = ca.issue("kvm1.example.org", sans=("10.0.0.5", "2001:DB8::1", "kvm1"))
    info = validate(cert, key, ca.cert_pem)
    assert info.subject == "CN=kvm1.example.org"
    assert info.ip_sans == ("10.0.0.5", "2001:db8::1") and info.dns_sans == ("kvm1",)
    assert info.not_after == x509.load_pem_x509_certificate(cert).not_valid_after_utc

    ec_key = ec.generate_private_key(ec.SECP384R1())
    ec_cert = _cert(_cn("ec-host"), ec_key, ca.certificate.subject, _ca_key(ca))
    assert validate(_pem(ec_cert), _key_pem(ec_key), ca.cert_pem).subject == "CN=ec-host"

    # root -> intermediate -> leaf: the intermediate in the CA bundle, or sent with the leaf
    mid_key, leaf_key = _rsa(), _rsa()
    mid = _cert(_cn("intermediate"), mid_key, ca.certificate.subject, _ca_key(ca), ca=True)
    leaf = _cert(_cn("leaf"), leaf_key, mid.subject, mid_key)
    assert validate(_pem(leaf), _key_pem(leaf_key), ca.cert_pem + _pem(mid)).subject == "CN=leaf"
    assert validate(_pem(leaf) + _pem(mid), _key_pem(leaf_key), ca.cert_pem).subject == "CN=leaf"


def test_refusals_say_what_is_wrong(ca: LabCA, tmp_path: Path) -> None:
    other = LabCA.create(tmp_path / "other")
    key, cert = ca.issue("good")
    other_key, other_cert = other.issue("stranger")
    old_key, old_cert = expired(ca)
    soon_key, soon_cert = ca.issue("soon", not_before=NOW + ONE_DAY, not_after=NOW + 9 * ONE_DAY)
    gone = LabCA.create(
        tmp_path / "gone", "gone-ca", not_before=NOW - 9 * ONE_DAY, not_after=NOW - ONE_DAY
    )
    gone_key, gone_cert = gone.issue("under-an-expired-ca", not_before=NOW - 2 * ONE_DAY)
    server_only_key = _rsa()
    server_only = _cert(
        _cn("server-only"),
        server_only_key,
        ca.certificate.subject,
        _ca_key(ca),
        eku=[ExtendedKeyUsageOID.SERVER_AUTH],
    )
    not_ca_key, leaf_key = _rsa(), _rsa()
    not_ca = _cert(_cn("not-a-ca"), not_ca_key, ca.certificate.subject, _ca_key(ca))
    below_not_ca = _cert(_cn("below"), leaf_key, not_ca.subject, not_ca_key)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    ed_cert = _cert(_cn("ed"), ed_key, ca.certificate.subject, _ca_key(ca))
    cases: list[tuple[bytes, bytes, bytes, str]] = [
        (other_cert, other_key, ca.cert_pem, "not signed by the given CA"),
        # The other CA's root sent along with the certificate is no anchor: only
        # cloud.ca.crt is. (The walk before issue 13 accepted this set.)
        (other_cert + other.cert_pem, other_key, ca.cert_pem, "not signed by the given CA"),
        (cert, other_key, ca.cert_pem, "does not match the private key"),
        (old_cert, old_key, ca.cert_pem, "the certificate expired on"),
        (soon_cert, soon_key, ca.cert_pem, "is not valid before"),
        (gone_cert, gone_key, gone.cert_pem, "CA certificate CN=gone-ca expired on"),
        (
            _pem(server_only),
            _key_pem(server_only_key),
            ca.cert_pem,
            "may not serve as a TLS client certificate",
        ),
        (_pem(below_not_ca), _key_pem(leaf_key), ca.cert_pem + _pem(not_ca), "no CA"),
        (_pem(ed_cert), _key_pem(ed_key), ca.cert_pem, "neither an RSA nor an EC key"),
        (cert, b"", ca.cert_pem, "the private key is empty"),
        (cert, _key_pem(_rsa(), b"pass"), ca.cert_pem, "not an unencrypted PEM private key"),
        (
            cert,
            b"-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n",
            ca.cert_pem,
            "refuses",
        ),
        (cert, key, b"garbage", "the CA bundle is not a PEM certificate"),
    ]
    for cert_pem, key_pem, ca_pem, message in cases:
        with pytest.raises(CertificateError, match=message) as caught:
            validate(cert_pem, key_pem, ca_pem)
        text = str(caught.value)
        assert "PRIVATE KEY" not in text and "BEGIN" not in text, text


def test_checking_a_set_does_not_load_cryptography(ca: LabCA, tmp_path: Path) -> None:
    """What the daemon does at each registration and once a day, in a fresh interpreter."""
    good, bad = tmp_path / "good", tmp_path / "bad"
    key, cert = ca.issue("kvm1", sans=("10.0.0.5",))
    write_set(good, key, cert, ca.cert_pem)
    write_set(bad, *expired(ca), ca.cert_pem)
    code = f"""
import json, sys
from pathlib import Path
from agent.certs.system_pki import evaluate
from agent.certs.expiry import expiry_warning
good = evaluate(Path({str(good)!r}), tls_enabled_setting=True, root=Path({str(tmp_path)!r}))
bad = evaluate(Path({str(bad)!r}), tls_enabled_setting=True, root=Path({str(tmp_path)!r}))
print(json.dumps({{
    "good": [good.certificate is not None, str(good.not_after)],
    "bad": [bad.certificate is None, list(bad.reasons), str(bad.not_after)],
    "warning": expiry_warning(Path({str(bad)!r}), 30),
    "loaded": sorted(m for m in sys.modules if m.split(".")[0] == "cryptography"),
}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    result = json.loads(out)
    assert result["loaded"] == []
    assert result["good"] == [True, str(x509.load_pem_x509_certificate(cert).not_valid_after_utc)]
    assert result["bad"][0] and "expired on" in result["bad"][1][0]
    old = x509.load_pem_x509_certificate((bad / "cloud.crt").read_bytes())
    assert result["bad"][2] == str(old.not_valid_after_utc)  # read although invalid
    assert result["warning"][0] == "error"


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_damaged_der_is_read_or_refused_never_crashes(ca: LabCA, data: st.DataObject) -> None:
    """What arrives in cloud.crt is read with the DER reader: a damaged certificate is a
    ValueError (then 'not a PEM certificate'), never another exception."""
    der = bytearray(ca.certificate.public_bytes(serialization.Encoding.DER))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(der) - 1))
        der[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(der)))
    try:
        info = read_certificate(bytes(der[:cut]) if data.draw(st.booleans()) else bytes(der))
    except ValueError:
        return
    assert info.not_before.tzinfo is not None and info.subject is not None
