"""The heartbeat file, written and read exactly as CloudStack's KVM agent does.

``<mount point>/KVMHA/hb-<host private IP>`` holds the epoch seconds of the last write
(``date +%s``, one line). Java agents write it with ``kvmheartbeat.sh -h`` and judge a
neighbour with ``kvmheartbeat.sh -r -t <kvm.heartbeat.update.frequency / 1000>``; a mixed
cluster must read every file the same way, so :func:`judge` is that script's check, quirks
and all:

* ``now - content > max age`` is DEAD; an age of exactly the maximum is alive;
* the age travels back as a shell return code (``return $diff``), which keeps its low 8 bits:
  an age that is a multiple of 256 reads as alive;
* a missing, empty or non-numeric file makes ``expr`` fail, and the script then says ALIVE
  (a host that never wrote a heartbeat is not declared dead by it);
* a file from the future reads as alive.

The file functions block (a dead NFS server can hang them): call them in a worker thread.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import re
from pathlib import Path

from attrs import frozen

HB_DIR = "KVMHA"
_EXPR_INTEGER = re.compile(r"-?[0-9]+")  # what coreutils' expr takes for an integer


class HeartbeatError(Exception):
    """The heartbeat cannot be written (or read); the text says where and why."""


class Liveness(enum.Enum):
    ALIVE = "alive"
    DEAD = "dead"
    UNKNOWN = "unknown"  # could not read: counted as alive, as the Java checker does

    @property
    def beating(self) -> bool:
        return self is not Liveness.DEAD


def check_ip(ip: str | None) -> str:
    """A host IP as it names a heartbeat file: an IP address, nothing else (it comes from the
    MS and becomes part of a path)."""
    try:
        return str(ipaddress.ip_address(ip or ""))
    except ValueError:
        raise HeartbeatError(f"invalid host IP {ip!r:.60} for a heartbeat file") from None


def heartbeat_path(mount_point: str, ip: str) -> Path:
    return Path(mount_point) / HB_DIR / f"hb-{check_ip(ip)}"


def _check_mounted(mount_point: str, must_be_mounted: bool, what: str) -> None:
    # An NFS pool that is not mounted would take the write on the local disk underneath:
    # neighbours would never see it (nor would a read show theirs).
    if must_be_mounted and not os.path.ismount(mount_point):
        raise HeartbeatError(f"{what}: {mount_point} is not mounted")


def write_heartbeat(mount_point: str, ip: str, epoch: int, *, must_be_mounted: bool) -> Path:
    """Write ``epoch`` (seconds) to the host's heartbeat file, in place as the Java agent
    does (same inode: NFS clients holding it open or cached see the new content), and fsync
    it so that it is on the storage, not in this host's page cache. HeartbeatError."""
    path = heartbeat_path(mount_point, ip)
    _check_mounted(mount_point, must_be_mounted, f"cannot write {path}")
    try:
        path.parent.mkdir(mode=0o755, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, f"{epoch}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise HeartbeatError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def read_heartbeat(mount_point: str, ip: str, *, must_be_mounted: bool) -> str | None:
    """The file's content; None if there is none. HeartbeatError if it cannot be read."""
    path = heartbeat_path(mount_point, ip)
    _check_mounted(mount_point, must_be_mounted, f"cannot read {path}")
    try:
        return path.read_bytes().decode("ascii", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HeartbeatError(f"cannot read {path}: {exc.strerror or exc}") from None


@frozen
class Judgement:
    liveness: Liveness
    age: int | None  # seconds, when the content was a number
    reason: str


def judge(content: str | None, now: int, max_age: float) -> Judgement:
    """kvmheartbeat.sh's check of a file's content at epoch ``now`` (see the module text)."""
    words = (content or "").split()  # $(cat f) unquoted: trailing newlines gone, words split
    if content is None:
        return Judgement(Liveness.UNKNOWN, None, "no heartbeat file")
    if len(words) != 1 or not _EXPR_INTEGER.fullmatch(words[0]):
        return Judgement(Liveness.UNKNOWN, None, f"heartbeat file holds {content.strip()!r:.40}")
    age = now - int(words[0])
    if age <= max_age:
        return Judgement(Liveness.ALIVE, age, f"last written {age} s ago")
    if age % 256 == 0:
        return Judgement(
            Liveness.ALIVE, age, f"last written {age} s ago (read as alive: age % 256 = 0)"
        )
    return Judgement(Liveness.DEAD, age, f"last written {age} s ago (more than {max_age:g} s)")
