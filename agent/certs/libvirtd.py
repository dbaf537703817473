"""Making libvirtd use a new certificate: virt-admin's TLS update, else a restart."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


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
