"""Certificate provisioning commands, and making libvirtd use a new certificate.

SetupKeyStoreCommand -> a new key (pending) and its CSR. SetupCertificateCommand ->
validated, installed atomically, PKI paths linked; then, once no command is in flight,
libvirtd re-reads its TLS files and the agent registers again (now secured).
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
import trio
from cryptography import x509

from agent import hostinfo
from agent.certs import CertificateError
from agent.certstore import CertStore
from agent.tls import CERT_FILE
from protocol.messages.certificates import (
    SetupCertificateAnswer,
    SetupCertificateCommand,
    SetupKeystoreAnswer,
    SetupKeyStoreCommand,
)
from protocol.model import Message

if TYPE_CHECKING:
    from agent.commands import CommandContext

log = structlog.get_logger("agent.certificates")


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


def host_identity() -> tuple[str, list[str], list[str]]:
    """(FQDN, host names, local IPs except loopback and link-local) for the CSR."""
    facts = hostinfo.os_facts()
    names = [n for n in dict.fromkeys([facts.hostname]) if n and n != facts.fqdn]
    return facts.fqdn, names, hostinfo.local_addresses()


async def setup_keystore(cmd: SetupKeyStoreCommand, ctx: CommandContext) -> Message:
    # keystorePassword is for a Java keystore; PEM files need none. Never logged.
    store = CertStore(ctx.config.cert_dir)
    fqdn, names, ips = await trio.to_thread.run_sync(host_identity)
    csr = await trio.to_thread.run_sync(store.new_csr, fqdn, names, ips)
    return SetupKeystoreAnswer(result=bool(csr), csr=csr.decode())


async def setup_certificate(cmd: SetupCertificateCommand, ctx: CommandContext) -> Message:
    cfg = ctx.config
    store = CertStore(cfg.cert_dir)
    key = cmd.private_key.encode() if cmd.private_key else None
    try:
        info = await trio.to_thread.run_sync(
            lambda: store.install(
                (cmd.certificate or "").encode(), (cmd.ca_certificates or "").encode(), key
            )
        )
    except CertificateError as exc:
        log.warning("certificate rejected", reason=str(exc))
        return SetupCertificateAnswer(
            result=False, details=f"certificate rejected, nothing changed: {exc}"
        )
    local = set(await trio.to_thread.run_sync(hostinfo.local_addresses))
    if not local.intersection(info.ip_sans):
        log.warning(
            "the certificate names none of this host's IP addresses; migrations dial by IP",
            sans=list(info.ip_sans),
        )
    try:
        linked = await trio.to_thread.run_sync(lambda: store.link_pki(cfg.pki_root))
    except (CertificateError, OSError) as exc:
        return SetupCertificateAnswer(
            result=False, details=f"certificate installed, but linking the PKI paths failed: {exc}"
        )
    if linked:
        log.info("PKI paths linked", paths=len(linked))
    ctx.agent.schedule_tls_reload()
    return SetupCertificateAnswer(
        result=True,
        details=f"installed {info.subject}, valid until {info.not_after:%Y-%m-%d}; libvirtd "
        "will use it once no command is running",
    )


def _systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def reload_libvirtd(mode: str) -> str:
    """Make libvirtd use the new files; returns what was done. Raises RuntimeError."""
    if mode == "none":
        return "not reloaded (libvirtd.reload=none)"
    errors = []
    if mode in ("auto", "update-tls"):
        try:
            done = subprocess.run(
                ["virt-admin", "server-update-tls", "libvirtd"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if done.returncode == 0:
                return "virt-admin server-update-tls libvirtd"
            errors.append(f"virt-admin: {done.stderr.strip() or done.returncode}")
        except (OSError, subprocess.TimeoutExpired) as exc:
            errors.append(f"virt-admin: {exc}")
        if mode == "update-tls":
            raise RuntimeError("; ".join(errors))
    if _systemd_running():
        argv = ["systemctl", "restart", "libvirtd"]
    elif shutil.which("service"):
        argv = ["service", "libvirtd", "restart"]
    else:
        argv = ["/etc/init.d/libvirtd", "restart"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        errors.append(f"{' '.join(argv)}: {exc}")
        raise RuntimeError("; ".join(errors)) from None
    if done.returncode != 0:
        errors.append(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
        raise RuntimeError("; ".join(errors))
    return " ".join(argv)
