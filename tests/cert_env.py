"""Certificate fixtures: a cloud CA, another CA, and sets of PEM files."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from lab.ca import LabCA

ONE_DAY = dt.timedelta(days=1)


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
