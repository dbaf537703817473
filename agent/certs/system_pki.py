"""Where libvirt and QEMU look for certificates, and whether this host is "secured".

Paths are relative to a ``root`` (``/`` in production) so that tools and tests can work
on a copy of a system's files.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import structlog
import trio
from attrs import frozen

from agent.certs.certinfo import CertificateError
from agent.certs.expiry import not_after
from agent.certs.trust import CA_FILE, CERT_FILE, KEY_FILE
from agent.certs.verify import ValidCertificate, validate
from agent.config import AgentConfig
from agent.observe.observer import observer

log = structlog.get_logger("agent.system_pki")

# libvirt / QEMU path (relative to root) -> the agent's file it links to.
PKI_LINKS: dict[str, str] = {
    "etc/pki/CA/cacert.pem": CA_FILE,
    "etc/pki/libvirt/servercert.pem": CERT_FILE,
    "etc/pki/libvirt/clientcert.pem": CERT_FILE,
    "etc/pki/libvirt/private/serverkey.pem": KEY_FILE,
    "etc/pki/libvirt/private/clientkey.pem": KEY_FILE,
    "etc/pki/qemu/ca-cert.pem": CA_FILE,
    "etc/pki/qemu/server-cert.pem": CERT_FILE,
    "etc/pki/qemu/server-key.pem": KEY_FILE,
    "etc/pki/qemu/client-cert.pem": CERT_FILE,
    "etc/pki/qemu/client-key.pem": KEY_FILE,
    "etc/pki/libvirt-vnc/ca-cert.pem": CA_FILE,
    "etc/pki/libvirt-vnc/server-cert.pem": CERT_FILE,
    "etc/pki/libvirt-vnc/server-key.pem": KEY_FILE,
}
QEMU_TLS_FILES = tuple(p for p in PKI_LINKS if p.startswith("etc/pki/qemu/"))
# What a host needs to receive a migration over TLS (libvirtd's and QEMU's server side).
MIGRATION_TLS_FILES = tuple(
    p for p in PKI_LINKS if p.startswith(("etc/pki/CA/", "etc/pki/libvirt/", "etc/pki/qemu/"))
)
LIBVIRTD_CONF = "etc/libvirt/libvirtd.conf"
_LISTEN_TLS = re.compile(r"^\s*listen_tls\s*=\s*1\s*(#.*)?$", re.M)


@frozen
class SecurityReport:
    secured: bool
    reasons: tuple[str, ...]  # why not secured (empty when secured)
    certificate: ValidCertificate | None
    not_after: dt.datetime | None = None  # cloud.crt's, valid or not (None: unreadable)


def certificate_set(cert_dir: Path, *, now: dt.datetime | None = None) -> ValidCertificate:
    """Validate cloud.crt/cloud.key/cloud.ca.crt in ``cert_dir`` (CertificateError)."""
    files = {}
    for name in (CERT_FILE, KEY_FILE, CA_FILE):
        try:
            files[name] = (cert_dir / name).read_bytes()
        except FileNotFoundError:
            raise CertificateError(f"{cert_dir / name} is missing") from None
        except OSError as exc:
            raise CertificateError(f"cannot read {cert_dir / name}: {exc.strerror}") from None
    return validate(files[CERT_FILE], files[KEY_FILE], files[CA_FILE], now=now)


def missing(root: Path, paths: tuple[str, ...]) -> list[str]:
    """The ``paths`` (relative to ``root``) that do not exist, as full paths."""
    return [str(root / p) for p in paths if not (root / p).exists()]


def libvirtd_tls_configured(root: Path, tls_enabled_setting: bool) -> bool:
    if tls_enabled_setting:
        return True
    try:
        return bool(_LISTEN_TLS.search((root / LIBVIRTD_CONF).read_text()))
    except OSError:
        return False


def evaluate(
    cert_dir: Path,
    *,
    tls_enabled_setting: bool,
    root: Path = Path("/"),
    now: dt.datetime | None = None,
) -> SecurityReport:
    """Secured = a valid certificate set, libvirtd configured for TLS, QEMU's TLS files."""
    reasons: list[str] = []
    certificate = None
    try:
        certificate = certificate_set(cert_dir, now=now)
    except CertificateError as exc:
        reasons.append(f"certificate set: {exc}")
    if not libvirtd_tls_configured(root, tls_enabled_setting):
        reasons.append(
            "libvirtd is not configured for TLS (libvirtd.tls.enabled=false and no "
            f"listen_tls = 1 in {root / LIBVIRTD_CONF})"
        )
    if absent := missing(root, QEMU_TLS_FILES):
        reasons.append(f"QEMU TLS files missing: {', '.join(absent)}")
    ends = certificate.not_after if certificate is not None else not_after(cert_dir)
    return SecurityReport(not reasons, tuple(reasons), certificate, ends)


async def secured(config: AgentConfig) -> bool:
    """Evaluated at every registration and migration (in a worker thread: it reads files),
    and logged: certificates, libvirtd TLS, QEMU TLS files."""
    report = await trio.to_thread.run_sync(
        lambda: evaluate(
            config.cert_dir, tls_enabled_setting=config.libvirtd_tls_enabled, root=config.pki_root
        )
    )
    observer().secured(report.secured, report.reasons)
    observer().certificate(report.not_after)
    if report.secured:
        log.info(
            "host is secured",
            not_after=str(report.certificate.not_after) if report.certificate else None,
        )
    elif any("expired" in r for r in report.reasons):
        log.error("host certificate EXPIRED: registering as unsecured", reasons=report.reasons)
    else:
        log.info("host is not secured", reasons=list(report.reasons))
    return report.secured
