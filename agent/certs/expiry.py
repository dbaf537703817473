"""The host certificate's expiry: a warning while it nears its end, an error once past."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from agent.certs.certinfo import CertificateError, certificates
from agent.certs.trust import CERT_FILE


def not_after(cert_dir: Path) -> dt.datetime | None:
    """cloud.crt's notAfter, valid or not; None without a readable certificate."""
    try:
        return certificates((cert_dir / CERT_FILE).read_bytes(), CERT_FILE)[0].not_after
    except (OSError, CertificateError):
        return None


def expiry_warning(cert_dir: Path, warn_days: int) -> tuple[str, str] | None:
    """("warning"|"error", text) when cloud.crt expires within ``warn_days`` or has expired."""
    return warning_for(not_after(cert_dir), cert_dir, warn_days)


def warning_for(ends: dt.datetime | None, cert_dir: Path, warn_days: int) -> tuple[str, str] | None:
    """The warning for a certificate that ends at ``ends`` (None: no certificate)."""
    if ends is None:
        return None  # no certificate yet: nothing to warn about
    left = ends - dt.datetime.now(dt.UTC)
    if left.total_seconds() <= 0:
        return "error", (
            f"host certificate {cert_dir / CERT_FILE} EXPIRED on "
            f"{ends:%Y-%m-%d}: the host registers as unsecured and "
            "libvirtd may refuse to start; provision a new certificate"
        )
    if left.days < warn_days:
        return "warning", (
            f"host certificate {cert_dir / CERT_FILE} expires in {left.days} days "
            f"({ends:%Y-%m-%d}); provision a new one"
        )
    return None
