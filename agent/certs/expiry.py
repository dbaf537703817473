"""The host certificate's expiry: a warning while it nears its end, an error once past."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509

from agent.certs.trust import CERT_FILE


def expiry_warning(cert_dir: Path, warn_days: int) -> tuple[str, str] | None:
    """("warning"|"error", text) when cloud.crt expires within ``warn_days`` or has expired."""
    try:
        cert = x509.load_pem_x509_certificate((cert_dir / CERT_FILE).read_bytes())
    except (OSError, ValueError):
        return None  # no certificate yet: nothing to warn about
    left = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    if left.total_seconds() <= 0:
        return "error", (
            f"host certificate {cert_dir / CERT_FILE} EXPIRED on "
            f"{cert.not_valid_after_utc:%Y-%m-%d}: the host registers as unsecured and "
            "libvirtd may refuse to start; provision a new certificate"
        )
    if left.days < warn_days:
        return "warning", (
            f"host certificate {cert_dir / CERT_FILE} expires in {left.days} days "
            f"({cert.not_valid_after_utc:%Y-%m-%d}); provision a new one"
        )
    return None
