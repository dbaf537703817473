"""The agent's TLS client context, built from cert.dir at every connect.

Rebuilding per connection means a newly imported certificate is used by the next
connection without restarting the agent.

Trust (docs/operations.md, "Trust"): CloudStack's management server presents its root CA
certificate itself as the TLS server certificate, and that certificate's keyUsage is
keyCertSign | cRLSign only. OpenSSL's server-purpose check refuses such a certificate unless
the trust store carries an explicit serverAuth trust setting for it: every certificate of
cloud.ca.crt is therefore loaded as a "TRUSTED CERTIFICATE" (the certificate's DER followed by
an X509_CERT_AUX naming serverAuth, what ``openssl x509 -addtrust serverAuth`` writes). An
explicit trust setting only lifts the purpose check of the trusted certificates themselves;
OpenSSL still verifies the chain, every signature and every certificate's dates (the anchor's
included) during the handshake, before a single byte of the session can be sent.
"""

from __future__ import annotations

import ssl
import tempfile
from pathlib import Path

from attrs import frozen

from agent.certs.certinfo import decode_body, is_one_der_sequence, pem_blocks, pem_encode

CA_FILE = "cloud.ca.crt"
CERT_FILE = "cloud.crt"
KEY_FILE = "cloud.key"

# X509_CERT_AUX ::= SEQUENCE { trust SEQUENCE OF OBJECT IDENTIFIER } holding only
# id-kp-serverAuth: 30 0c (aux) 30 0a (trust) 06 08 2b06010505070301 (1.3.6.1.5.5.7.3.1).
SERVER_AUTH_TRUST = bytes.fromhex("300c300a06082b06010505070301")


class TLSConfigError(Exception):
    """The certificate files do not allow a verified connection."""


@frozen
class ClientTLS:
    context: ssl.SSLContext
    insecure: bool  # bootstrap mode: the MS is NOT verified


def client_context(
    cert_dir: Path, *, bootstrap_insecure: bool = False, verify_hostname: bool = False
) -> ClientTLS:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # The Java MS negotiates TLS 1.2 only, and the chunk framing needs TLS 1.2.
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ca = cert_dir / CA_FILE
    insecure = False
    if ca.exists():
        try:
            bundle = ca.read_bytes()
        except OSError as exc:
            raise TLSConfigError(f"cannot read the CA bundle {ca}: {_reason(exc)}") from None
        load_trust_anchors(ctx, bundle, source=str(ca))
        # The MS presents its CA certificate itself, whose name is no host name of the MS.
        ctx.check_hostname = verify_hostname
    elif bootstrap_insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        insecure = True
    else:
        raise TLSConfigError(
            f"no CA file {ca}: refusing to connect to an unverified management server "
            "(provision certificates, or set ssl.bootstrap.insecure=true to bootstrap)"
        )
    cert, key = cert_dir / CERT_FILE, cert_dir / KEY_FILE
    has_cert = cert.exists() and key.exists()
    if has_cert:
        try:
            ctx.load_cert_chain(str(cert), str(key))
        except (ssl.SSLError, OSError) as exc:
            raise TLSConfigError(
                f"cannot use the client certificate {cert} with its key: {_reason(exc)}"
            ) from None
    elif cert.exists() != key.exists():
        present = cert if cert.exists() else key
        raise TLSConfigError(f"{present} exists without its pair; both or neither are needed")
    return ClientTLS(context=ctx, insecure=insecure)


def load_trust_anchors(ctx: ssl.SSLContext, bundle: bytes, *, source: str) -> None:
    """Trust every certificate of the PEM ``bundle`` as an anchor for TLS servers.

    ``cadata`` refuses "TRUSTED CERTIFICATE" blocks and drops the trust setting of DER
    input, so the converted bundle goes through a private temporary file (0600, deleted at
    once; it holds only public certificates).
    """
    anchors = trusted_certificates(bundle, source=source)
    try:
        with tempfile.NamedTemporaryFile(prefix="kvm-agent-trust-", suffix=".pem") as tmp:
            tmp.write(anchors)
            tmp.flush()
            ctx.load_verify_locations(cafile=tmp.name)
    except ssl.SSLError as exc:
        raise TLSConfigError(f"cannot load the CA bundle {source}: {_reason(exc)}") from None
    except OSError as exc:
        raise TLSConfigError(
            f"cannot load the CA bundle {source}: temporary file: {_reason(exc)} "
            "(check that TMPDIR or /tmp is writable)"
        ) from None


def trusted_certificates(bundle: bytes, *, source: str) -> bytes:
    """The CERTIFICATE blocks of ``bundle`` as TRUSTED CERTIFICATE blocks trusted for
    serverAuth. Anything else in a PEM block is refused: a CA file holds certificates."""
    out: list[bytes] = []
    for number, (label, body) in enumerate(pem_blocks(bundle), start=1):
        if label != "CERTIFICATE":
            raise TLSConfigError(
                f"{source}: PEM block {number} is a {label!r}; a CA file holds only "
                "'CERTIFICATE' blocks"
            )
        try:
            der = decode_body(body)
        except ValueError:
            raise TLSConfigError(f"{source}: certificate {number} is not valid base64") from None
        if not is_one_der_sequence(der):
            raise TLSConfigError(f"{source}: certificate {number} is not one DER certificate")
        out.append(pem_encode("TRUSTED CERTIFICATE", der + SERVER_AUTH_TRUST))
    if not out:
        raise TLSConfigError(f"{source} holds no PEM certificate")
    return b"".join(out)


def _reason(exc: Exception) -> str:
    # Never the file content: only the library's reason or the OS error text.
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc.__class__.__name__)
    if isinstance(exc, OSError):
        return str(exc.strerror or exc.__class__.__name__)
    return exc.__class__.__name__
