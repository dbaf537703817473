"""Packet capture on a lab host's uplink (the veth port of its bridge), with tcpdump's counts.

Everything between the two hosts crosses that veth, so a capture there holds every
migration stream, NBD disk copy and libvirt connection between them.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import structlog
from attrs import define

from lab.netns import LabError

log = structlog.get_logger("lab.capture")


class CaptureHost(Protocol):
    """What a capture needs of a lab host (lab.hosts.LabHost), named here so that the host
    module can offer captures without the two importing each other."""

    @property
    def name(self) -> str: ...

    @property
    def veth(self) -> str: ...

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]: ...


@define
class Capture:
    """A capture file, with tcpdump's counts once the capture has ended."""

    path: Path
    packets: int | None = None
    dropped: int | None = None


def _read_until(proc: subprocess.Popen[bytes], needle: bytes, timeout: float) -> bytes:
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise LabError(f"tcpdump did not start: {seen.decode(errors='replace')}")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise LabError(f"tcpdump exited: {seen.decode(errors='replace').strip()}")
        seen += chunk
    return seen


def _count(text: str, what: str) -> int | None:
    m = re.search(rf"(\d+) packets? {what}", text)
    return int(m.group(1)) if m else None


@contextmanager
def capture(host: CaptureHost, path: Path) -> Iterator[Capture]:
    """tcpdump on the host's uplink into ``path`` (a path outside the bound ones) for the
    duration of the block; capturing already when the block starts."""
    path = path.absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    argv = ["tcpdump", "-i", host.veth, "-n", "-s", "0", "-B", "32768", "-Z", "root"]
    proc = host.popen(
        [*argv, "-w", str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    cap = Capture(path)
    stderr = b""
    try:
        # tcpdump says "listening on" once the capture is active.
        stderr = _read_until(proc, b"listening on", timeout=10)
        yield cap
    finally:
        proc.send_signal(signal.SIGINT)  # tcpdump flushes the file and prints its counts
        try:
            stderr += proc.communicate(timeout=30)[1]
        except subprocess.TimeoutExpired:
            proc.kill()
            stderr += proc.communicate()[1]
        text = stderr.decode(errors="replace")
        cap.packets, cap.dropped = _count(text, "captured"), _count(text, "dropped by kernel")
        log.info("lab.captured", host=host.name, path=str(path), packets=cap.packets)
