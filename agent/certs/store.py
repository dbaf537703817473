"""The agent's certificate directory, switched between complete sets atomically.

Layout of ``cert.dir``::

    sets/<stamp>/{cloud.key,cloud.crt,cloud.ca.crt}   complete sets (0700 dirs, key 0600)
    current -> sets/<stamp>                             one rename switches every file
    cloud.key -> current/cloud.key                      the names CloudStack and libvirt use
    cloud.crt -> current/cloud.crt
    cloud.ca.crt -> current/cloud.ca.crt
    pending/{cloud.key,cloud.csr}                       a key waiting for its certificate

A crash at any instant leaves ``current`` pointing at either the old or the new complete
set. The previous set stays as the backup. Plain files of an older layout are converted
first, in steps that each leave the same (old) content visible.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
from pathlib import Path

import structlog

from agent.certs.certinfo import CertificateError
from agent.certs.dhparams import ensure_dh_params
from agent.certs.system_pki import PKI_LINKS
from agent.certs.trust import CA_FILE, CERT_FILE, KEY_FILE
from agent.certs.verify import ValidCertificate, validate
from agent.fsutil import atomic_write, fsync_dir

log = structlog.get_logger("agent.certs.store")
FILES = (KEY_FILE, CERT_FILE, CA_FILE)
KEEP_SETS = 2  # the current set and one backup
PENDING = "pending"
CSR_FILE = "cloud.csr"


def _replace_symlink(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` in one rename: never missing, never half-made."""
    tmp = link.with_name(f".{link.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(target)
    os.replace(tmp, link)
    fsync_dir(link.parent)


class CertStore:
    def __init__(self, cert_dir: Path) -> None:
        self.dir = cert_dir
        self.sets = cert_dir / "sets"
        self.current = cert_dir / "current"
        self.pending = cert_dir / PENDING

    # --- keys and CSRs --------------------------------------------------------------

    def new_csr(self, fqdn: str, names: list[str], ips: list[str]) -> bytes:
        """A new private key (kept pending, 0600) and its CSR; the current set is untouched."""
        # Only here does the agent need ``cryptography``: imported when a key is made, so
        # the daemon that never makes one never carries it (issue 13).
        from agent.certs.keys import make_csr, new_private_key, private_key_pem

        key = new_private_key()
        csr = make_csr(key, fqdn, names, ips)
        self.pending.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write(self.pending / KEY_FILE, private_key_pem(key), mode=0o600)
        atomic_write(self.pending / CSR_FILE, csr, mode=0o644)
        log.info("new key and CSR created", fqdn=fqdn, sans=len(names) + len(ips))
        return csr

    def pending_key(self) -> bytes | None:
        try:
            return (self.pending / KEY_FILE).read_bytes()
        except FileNotFoundError:
            return None

    # --- install --------------------------------------------------------------------

    def install(
        self,
        cert_pem: bytes,
        ca_pem: bytes,
        key_pem: bytes | None = None,
        *,
        now: dt.datetime | None = None,
    ) -> ValidCertificate:
        """Validate, then switch to the new set. Raises CertificateError with nothing changed."""
        key = key_pem if key_pem else self.pending_key()
        if key is None:
            raise CertificateError(
                "no private key: none was sent and no key is pending (run keystore-setup first)"
            )
        info = validate(cert_pem, key, ca_pem, now=now)
        self._convert_legacy()
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        new_set = self.sets / stamp
        new_set.mkdir(mode=0o700, parents=True)
        atomic_write(new_set / KEY_FILE, key, mode=0o600)
        atomic_write(new_set / CERT_FILE, cert_pem, mode=0o644)
        atomic_write(new_set / CA_FILE, ca_pem, mode=0o644)
        fsync_dir(self.sets)
        _replace_symlink(self.current, f"sets/{stamp}")  # the switch: one rename
        self._ensure_file_links()
        if key_pem is None or key == self.pending_key():
            shutil.rmtree(self.pending, ignore_errors=True)
        self._prune()
        log.info("certificate installed", subject=info.subject, not_after=str(info.not_after))
        return info

    def _convert_legacy(self) -> None:
        """Move plain cloud.* files into a set of their own, visible content unchanged."""
        if self.current.is_symlink():
            return
        present = [f for f in FILES if (self.dir / f).is_file() and not (self.dir / f).is_symlink()]
        if not present:
            return
        old = self.sets / "legacy"
        old.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name in present:
            mode = 0o600 if name == KEY_FILE else 0o644
            atomic_write(old / name, (self.dir / name).read_bytes(), mode=mode)
        _replace_symlink(self.current, "sets/legacy")
        for name in present:
            _replace_symlink(self.dir / name, f"current/{name}")

    def _ensure_file_links(self) -> None:
        for name in FILES:
            link = self.dir / name
            if not (link.is_symlink() and os.readlink(link) == f"current/{name}"):
                _replace_symlink(link, f"current/{name}")

    def _prune(self) -> None:
        keep = os.readlink(self.current).removeprefix("sets/")
        sets = sorted(
            (p for p in self.sets.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime
        )
        backups = [p for p in sets if p.name != keep]
        for old in backups[: max(0, len(backups) - (KEEP_SETS - 1))]:
            shutil.rmtree(old, ignore_errors=True)

    # --- libvirt and QEMU paths -----------------------------------------------------

    def link_pki(self, root: Path = Path("/")) -> list[str]:
        """Point libvirt's and QEMU's PKI paths at our files, and give QEMU its DH
        parameters (agent.certs.dhparams); returns the paths changed.

        Each link is replaced in one rename, and only once its target exists, so
        /etc/pki/CA/cacert.pem is never missing or dangling (libvirtd would not start).
        """
        changed = []
        for rel, name in PKI_LINKS.items():
            target = self.dir / name
            if not target.exists():
                raise CertificateError(f"{target} is missing; cannot link {root / rel}")
            link = root / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() and Path(os.readlink(link)) == target:
                continue
            _replace_symlink(link, str(target))
            changed.append(str(link))
        if dh_params := ensure_dh_params(root):
            changed.append(str(dh_params))
        return changed
