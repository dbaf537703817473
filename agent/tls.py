"""The agent's TLS client context, built from cert.dir at every connect.

Rebuilding per connection means a newly imported certificate is used by the next
connection without restarting the agent.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from attrs import frozen

CA_FILE = "cloud.ca.crt"
CERT_FILE = "cloud.crt"
KEY_FILE = "cloud.key"


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
            ctx.load_verify_locations(cafile=str(ca))
        except (ssl.SSLError, OSError) as exc:
            raise TLSConfigError(f"cannot load the CA bundle {ca}: {_reason(exc)}") from None
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


def _reason(exc: Exception) -> str:
    # Never the file content: only the library's reason or the OS error text.
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc.__class__.__name__)
    if isinstance(exc, OSError):
        return str(exc.strerror or exc.__class__.__name__)
    return exc.__class__.__name__
