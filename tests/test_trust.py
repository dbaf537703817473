"""Trusting a CloudStack management server (issue 9).

The MS presents its root CA certificate, keyUsage keyCertSign|cRLSign only, as its TLS
server certificate. The agent must accept exactly what CloudStack's Java agent accepts and
nothing weaker, and must send no byte of its session to a server it has not verified.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import socket
import ssl
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.certs.trust import (
    SERVER_AUTH_TRUST,
    TLSConfigError,
    client_context,
    load_trust_anchors,
    trusted_certificates,
)
from lab.ca import CA_KEY_BITS, KEY_FILE, CAError, LabCA
from protocol.messages.host import StartupRoutingCommand
from tests.agent_env import (
    agent_config,
    agent_dir,
    captured_logs,
    guid_of,
    running_agent,
    running_ms,
)
from tests.tls_peers import (
    ALERT,
    HANDSHAKE,
    Recorded,
    RecordingServer,
    record_types,
    recording_server,
)

NOW = dt.datetime.now(dt.UTC)
DAY = dt.timedelta(days=1)
STARTUP = StartupRoutingCommand.JAVA_CLASS.encode()


# --- the CA, as CloudStack makes it ---------------------------------------------------


def test_lab_ca_is_made_as_cloudstack_makes_its_root_ca(ca: LabCA) -> None:
    cert = ca.certificate
    key = cert.public_key()
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == CA_KEY_BITS
    assert (
        cert.subject.rfc4514_string()
        == "CN=ca.cloudstack.apache.org"
        == cert.issuer.rfc4514_string()
    )
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature and not usage.value.key_encipherment
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    assert {type(e.value) for e in cert.extensions} == {
        x509.BasicConstraints,
        x509.KeyUsage,
        x509.SubjectKeyIdentifier,
    }
    assert cert.signature_hash_algorithm is not None
    assert cert.signature_hash_algorithm.name == "sha256"
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 30 * 365
    assert dt.timedelta(hours=11) < NOW - cert.not_valid_before_utc < dt.timedelta(hours=13)


def _old_style_ca(directory: Path) -> None:
    """What lab/ca.py made before issue 9: EC, with digitalSignature."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ca.cloudstack.apache.org")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + 3650 * DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), True
        )
        .sign(key, hashes.SHA256())
    )
    directory.mkdir()
    (directory / KEY_FILE).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (directory / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def test_a_ca_made_the_old_way_is_refused_not_reused(tmp_path: Path) -> None:
    _old_style_ca(tmp_path / "ca")
    before = (tmp_path / "ca" / "ca.crt").read_bytes()
    for load in (LabCA.load, LabCA.load_or_create):
        with pytest.raises(CAError) as err:
            load(tmp_path / "ca")
        text = str(err.value)
        assert "not made the way CloudStack makes its root CA" in text
        assert "not RSA" in text and "keyCertSign|cRLSign" in text
        assert f"remove {tmp_path / 'ca'}" in text
        assert "PRIVATE" not in text
    assert (tmp_path / "ca" / "ca.crt").read_bytes() == before  # nothing overwritten


# --- the trust rule -------------------------------------------------------------------


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> str:
    """TLS over a socketpair; the client's version or its verification error."""
    a, b = socket.socketpair()
    out: dict[str, str] = {}

    def serve() -> None:
        try:
            with server.wrap_socket(a, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client.wrap_socket(b) as tls:
            out["version"] = tls.version() or ""
    except ssl.SSLCertVerificationError as exc:
        out["error"] = str(exc.verify_message)
    except ssl.SSLError as exc:
        out["error"] = str(exc.reason)
    finally:
        b.close()
        thread.join()
        a.close()
    return out.get("version") or out["error"]


def _plain_trust(ca: LabCA) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=ca.cert_pem.decode())
    return ctx


def _agent_trust(ca: LabCA, tmp_path: Path) -> ssl.SSLContext:
    return client_context(agent_dir(tmp_path, ca, with_client_cert=False)).context


def test_openssl_alone_refuses_the_cloudstack_server_certificate(ca: LabCA) -> None:
    # Why the rule exists: trusted the ordinary way, the MS's certificate is refused.
    server = ca.server_context()
    assert _handshake(server, _plain_trust(ca)) == "unsuitable certificate purpose"


def test_the_anchor_presented_as_server_certificate_is_accepted(ca: LabCA, tmp_path: Path) -> None:
    assert _handshake(ca.server_context(), _agent_trust(ca, tmp_path)) == "TLSv1.2"


def _leaf_server(ca: LabCA, tmp_path: Path, extension: x509.ExtensionType | None) -> ssl.SSLContext:
    """A server presenting a certificate ``ca`` issued (plus ``extension``), chain included."""
    ca_key = serialization.load_pem_private_key(ca.key_path.read_bytes(), password=None)
    assert isinstance(ca_key, rsa.RSAPrivateKey)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ms.test")]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + DAY)
    )
    if extension is not None:
        builder = builder.add_extension(extension, critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    chain = tmp_path / "chain.pem"
    chain.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + ca.cert_pem)
    (tmp_path / "leaf.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(chain, tmp_path / "leaf.key")
    return ctx


def test_an_issued_server_certificate_is_still_checked_for_server_use(
    ca: LabCA, tmp_path: Path
) -> None:
    trust = _agent_trust(ca, tmp_path)
    # No keyUsage/extendedKeyUsage (as CloudStack issues them), or serverAuth: accepted.
    assert _handshake(_leaf_server(ca, tmp_path, None), trust) == "TLSv1.2"
    server_auth = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    assert _handshake(_leaf_server(ca, tmp_path, server_auth), trust) == "TLSv1.2"
    # The explicit trust covers the anchor only: a client-only certificate is refused.
    client_only = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
    assert (
        _handshake(_leaf_server(ca, tmp_path, client_only), trust)
        == "unsuitable certificate purpose"
    )


def test_trusted_certificates_carry_server_auth_trust(ca: LabCA, other_ca: LabCA) -> None:
    bundle = ca.cert_pem + b"comment between blocks\n" + other_ca.cert_pem
    out = trusted_certificates(bundle, source="cloud.ca.crt")
    assert out.count(b"-----BEGIN TRUSTED CERTIFICATE-----") == 2
    der = ssl.PEM_cert_to_DER_cert(ca.cert_pem.decode())
    first = out.split(b"-----END TRUSTED CERTIFICATE-----")[0].split(b"-----\n", 1)[1]
    assert base64.b64decode(first) == der + SERVER_AUTH_TRUST


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "holds no PEM certificate"),
        (b"not a certificate\n", "holds no PEM certificate"),
        (
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "PEM block 1 is a 'PRIVATE KEY'",
        ),
        (b"-----BEGIN CERTIFICATE-----\n#!?\n-----END CERTIFICATE-----\n", "not valid base64"),
        (
            b"-----BEGIN CERTIFICATE-----\nMAMCAQEA\n-----END CERTIFICATE-----\n",
            "not one DER certificate",
        ),
        (
            b"-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n",
            "cannot load the CA bundle",
        ),
    ],
)
def test_unusable_ca_files_are_refused_clearly(
    tmp_path: Path, content: bytes, message: str
) -> None:
    (tmp_path / "cloud.ca.crt").write_bytes(content)
    with pytest.raises(TLSConfigError) as err:
        client_context(tmp_path)
    assert message in str(err.value)
    assert str(tmp_path / "cloud.ca.crt") in str(err.value)


def test_load_trust_anchors_leaves_no_file_behind(
    ca: LabCA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seen: list[tuple[Path, int, bytes]] = []

    class Spy(ssl.SSLContext):
        def load_verify_locations(self, cafile: Any = None, *args: Any, **kw: Any) -> None:
            path = Path(cafile)
            seen.append((path.parent, path.stat().st_mode & 0o777, path.read_bytes()))
            super().load_verify_locations(cafile, *args, **kw)

    ctx = Spy(ssl.PROTOCOL_TLS_CLIENT)
    load_trust_anchors(ctx, ca.cert_pem, source="test")
    ((directory, mode, content),) = seen
    assert directory == tmp_path and mode == 0o600
    assert content.startswith(b"-----BEGIN TRUSTED CERTIFICATE-----\n")
    assert list(tmp_path.iterdir()) == []  # deleted once loaded
    assert len(ctx.get_ca_certs()) == 1


# --- the real agent against a real MS ---------------------------------------------------


async def test_agent_registers_with_an_ms_presenting_its_cloudstack_ca(tmp_path: Path) -> None:
    async with running_ms(tmp_path, ping_interval=1) as ms:
        config = agent_config(tmp_path, f"127.0.0.1:{ms.port}", agent_dir(tmp_path, ms.ca))
        async with running_agent(config) as agent:
            await ms.wait_for_host(guid_of("agent1"), timeout=10)
            assert agent.session is not None
            presented = agent.session.stream.peer_certificate
    # The MS's certificate is its CA certificate, keyCertSign|cRLSign only.
    assert presented == ms.ca.certificate.public_bytes(serialization.Encoding.DER)
    usage = x509.load_der_x509_certificate(presented).extensions.get_extension_for_class(
        x509.KeyUsage
    )
    assert usage.critical and not usage.value.digital_signature


async def _run_agent_against(
    server: RecordingServer, trust: LabCA, tmp_path: Path, *, until_message: bool = False
) -> tuple[list[Recorded], str]:
    """The real agent, trusting ``trust`` and holding a host certificate of it, dialling
    ``server`` until one connection ended (or a message arrived); its log."""
    config = agent_config(
        tmp_path, f"127.0.0.1:{server.port}", agent_dir(tmp_path, trust), **{"startup.timeout": "5"}
    )
    with captured_logs() as logbuf:
        async with running_agent(config):
            with trio.fail_after(15):
                while True:
                    done = [c for c in server.connections if c.done.is_set()]
                    if until_message and any(c.messages for c in server.connections):
                        break
                    if not until_message and done and "connect failed" in logbuf.getvalue():
                        break
                    await trio.sleep(0.05)
    return list(server.connections), logbuf.getvalue()


def _connect_errors(log: str) -> list[str]:
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    return [e["error"] for e in events if e.get("event") == "connect failed"]


def _assert_nothing_of_the_session_sent(connections: list[Recorded]) -> None:
    for record in [c for c in connections if c.done.is_set()]:
        assert record.tls_version is None and record.messages == []
        types = record_types(bytes(record.raw))
        assert types[0] == HANDSHAKE  # the ClientHello: the agent did talk to this server
        # Only handshake and alert records: no ChangeCipherSpec, no application data.
        assert set(types) <= {HANDSHAKE, ALERT}, types


async def test_recording_server_sees_the_session_of_a_verified_agent(
    ca: LabCA, tmp_path: Path
) -> None:
    """The control for the refusals below: the same recorder, the right CA."""
    with recording_server(ca.server_context()) as server:
        connections, _ = await _run_agent_against(server, ca, tmp_path, until_message=True)
    (first, *_) = connections
    assert first.tls_version == "TLSv1.2"
    assert STARTUP in first.messages[0]
    with pytest.raises(ValueError):  # chunk-framed session bytes followed the handshake
        record_types(bytes(first.raw))


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("other key, same subject", "self-signed certificate"),
        ("expired", "certificate has expired"),
        ("not yet valid", "certificate is not yet valid"),
    ],
)
async def test_agent_refuses_an_ms_it_cannot_verify(
    ca: LabCA, other_ca: LabCA, tmp_path: Path, case: str, reason: str
) -> None:
    if case == "other key, same subject":
        assert other_ca.certificate.subject == ca.certificate.subject
        server_ca, trust = other_ca, ca
    elif case == "expired":
        server_ca = trust = LabCA.create(
            tmp_path / "ca", not_before=NOW - 400 * DAY, not_after=NOW - DAY
        )
    else:
        server_ca = trust = LabCA.create(
            tmp_path / "ca", not_before=NOW + DAY, not_after=NOW + 400 * DAY
        )
    with recording_server(server_ca.server_context()) as server:
        connections, log = await _run_agent_against(server, trust, tmp_path)
    errors = _connect_errors(log)
    assert errors and all(f"peer certificate rejected: {reason}" in e for e in errors), errors
    _assert_nothing_of_the_session_sent(connections)


def _tls11_server(ca: LabCA) -> ssl.SSLContext:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is the point here
        ctx = ca.server_context()
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 offers TLS 1.1 only at level 0
    return ctx


async def test_agent_refuses_tls_1_1(ca: LabCA, tmp_path: Path) -> None:
    with recording_server(_tls11_server(ca)) as server:
        # Control: a client that accepts TLS 1.1 gets it from this very server.
        control = _agent_trust(ca, tmp_path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            control.minimum_version = ssl.TLSVersion.TLSv1_1
        control.set_ciphers("DEFAULT:@SECLEVEL=0")
        with (
            socket.create_connection(("127.0.0.1", server.port)) as raw,
            control.wrap_socket(raw) as tls,
        ):
            assert tls.version() == "TLSv1.1"
        # The agent's own context, even with TLS 1.1's ciphers allowed, refuses the version.
        floor = _agent_trust(ca, tmp_path)
        floor.set_ciphers("DEFAULT:@SECLEVEL=0")
        with (
            socket.create_connection(("127.0.0.1", server.port)) as raw,
            pytest.raises(ssl.SSLError) as refused,
        ):
            floor.wrap_socket(raw)
        assert refused.value.reason == "UNSUPPORTED_PROTOCOL", refused.value
        with trio.fail_after(5):
            while len([c for c in server.connections if c.done.is_set()]) < 2:
                await trio.sleep(0.05)
        server.connections.clear()
        connections, log = await _run_agent_against(server, ca, tmp_path)
    errors = _connect_errors(log)
    assert errors and all("TLS handshake failed" in e for e in errors), errors
    # The agent's ClientHello offers nothing below TLS 1.2 (nor its ciphers).
    assert all(c.error and "NO_SHARED_CIPHER" in c.error for c in connections if c.done.is_set())
    _assert_nothing_of_the_session_sent(connections)
