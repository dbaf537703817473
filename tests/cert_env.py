"""Certificate fixtures: CloudStack-made CAs, and sets of PEM files."""

from __future__ import annotations

import atexit
import datetime as dt
import shutil
import tempfile
from pathlib import Path

from lab.ca import CERT_FILE, KEY_FILE, LabCA

ONE_DAY = dt.timedelta(days=1)
_template: LabCA | None = None


def cloudstack_ca(directory: Path) -> LabCA:
    """A CA made the way CloudStack makes its root CA, in ``directory``.

    One 4096-bit key per test process, copied: a new key takes about a second. Tests that
    need a distinct CA (another key) call ``LabCA.create``.
    """
    global _template
    if not (directory / KEY_FILE).exists():
        if _template is None:
            home = Path(tempfile.mkdtemp(prefix="cloudstack-ca-"))
            atexit.register(shutil.rmtree, home, ignore_errors=True)
            _template = LabCA.create(home / "ca")
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        for name in (KEY_FILE, CERT_FILE):
            shutil.copy2(_template.directory / name, directory / name)
    return LabCA.load(directory)


def write_set(cert_dir: Path, key: bytes, cert: bytes, ca: bytes) -> None:
    cert_dir.mkdir(parents=True, exist_ok=True)
    (cert_dir / "cloud.key").write_bytes(key)
    (cert_dir / "cloud.key").chmod(0o600)
    (cert_dir / "cloud.crt").write_bytes(cert)
    (cert_dir / "cloud.ca.crt").write_bytes(ca)


def snapshot(cert_dir: Path) -> dict[str, bytes]:
    """The content the agent and libvirt see under the CloudStack names."""
    out = {}
    for name in ("cloud.key", "cloud.crt", "cloud.ca.crt"):
        path = cert_dir / name
        out[name] = path.read_bytes() if path.exists() else b""
    return out


def expired(ca: LabCA, name: str = "old") -> tuple[bytes, bytes]:
    now = dt.datetime.now(dt.UTC)
    return ca.issue(
        name, sans=("10.0.0.1",), not_before=now - 400 * ONE_DAY, not_after=now - ONE_DAY
    )
