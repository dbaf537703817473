"""Certificate provisioning commands.

SetupKeyStoreCommand -> a new key (pending) and its CSR. SetupCertificateCommand ->
validated, installed atomically, PKI paths linked; then, once no command is in flight,
libvirtd re-reads its TLS files (agent.certs.libvirtd) and the agent registers again (now
secured).
"""

from __future__ import annotations

from typing import Protocol

import structlog
import trio

from agent.certs.certinfo import CertificateError
from agent.certs.store import CertStore
from agent.config import AgentConfig
from agent.handlers import handler
from agent.handlers.context import TlsReload
from agent.hypervisor import hostinfo
from agent.hypervisor.hostinfo import host_identity
from protocol.messages.certificates import (
    SetupCertificateAnswer,
    SetupCertificateCommand,
    SetupKeystoreAnswer,
    SetupKeyStoreCommand,
)
from protocol.model import Message

log = structlog.get_logger("agent.certificates")


class CertificateContext(Protocol):
    @property
    def config(self) -> AgentConfig: ...

    @property
    def tls_reload(self) -> TlsReload: ...


@handler(SetupKeyStoreCommand)
async def setup_keystore(cmd: SetupKeyStoreCommand, ctx: CertificateContext) -> Message:
    # keystorePassword is for a Java keystore; PEM files need none. Never logged.
    store = CertStore(ctx.config.cert_dir)
    fqdn, names, ips = await trio.to_thread.run_sync(host_identity)
    csr = await trio.to_thread.run_sync(store.new_csr, fqdn, names, ips)
    return SetupKeystoreAnswer(result=bool(csr), csr=csr.decode())


@handler(SetupCertificateCommand)
async def setup_certificate(cmd: SetupCertificateCommand, ctx: CertificateContext) -> Message:
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
    ctx.tls_reload.schedule()
    return SetupCertificateAnswer(
        result=True,
        details=f"installed {info.subject}, valid until {info.not_after:%Y-%m-%d}; libvirtd "
        "will use it once no command is running",
    )
