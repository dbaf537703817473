"""Where the status socket is, and an address for it that fits in a sockaddr_un."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

SOCKET_NAME = "status.sock"
_SUN_PATH_MAX = 100  # sockaddr_un holds 108 bytes; keep clear of it


def socket_path(state_dir: Path) -> Path:
    return state_dir / SOCKET_NAME


@contextlib.contextmanager
def short_address(path: Path) -> Iterator[str]:
    """An address for ``path`` that fits sockaddr_un: the path itself, or the same file
    reached through an open descriptor of its directory (/proc/self/fd/N/name)."""
    if len(os.fsencode(path)) < _SUN_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)
