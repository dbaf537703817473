"""The running agent's status, for ``kvm-agent status``, over a root-only unix socket.

``<state.dir>/status.sock`` (mode 0600) is created atomically: bound under a private
temporary name, made 0600, then renamed into place, so it is never reachable with looser
permissions, and a stale socket of a crashed agent is replaced in one step (state.dir's lock
says only one agent uses the directory). It is removed when the agent exits. A client
connects and reads one JSON document (:func:`snapshot`); it sends nothing. Peers of another
user than the agent's are refused (SO_PEERCRED), whatever the socket's mode.

The status does not depend on metrics being on: it comes from the agent's Recorder and
its live objects. Building it takes no lock and blocks nothing but for reading cloud.crt's
dates, in a worker thread.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import struct
import tempfile
from pathlib import Path
from typing import Any, Protocol

import structlog
import trio

from agent import __version__
from agent.certs.expiry import not_after
from agent.certs.trust import CERT_FILE
from agent.config import AgentConfig
from agent.observe.recorder import Facts
from agent.observe.unixsock import short_address, socket_path

log = structlog.get_logger("agent.status")
SERVE_SECONDS = 5.0  # a client that does not read its answer in time is dropped


class StatusSource(Protocol):
    """What status reads of the agent (agent.daemon.app.Agent has it all)."""

    @property
    def config(self) -> AgentConfig: ...

    @property
    def facts(self) -> Facts: ...

    def live(self) -> dict[str, Any]:
        """What only the running objects know: host_id, commands_in_flight,
        migrations_running, metrics (the address served, or why not)."""
        ...


def _iso(when: dt.datetime | None) -> str | None:
    return when.isoformat(timespec="seconds") if when is not None else None


async def snapshot(source: StatusSource) -> dict[str, Any]:
    """The status document (``kvm-agent status --json`` prints it as is)."""
    cfg, facts = source.config, source.facts
    live = source.live()
    expires = await trio.to_thread.run_sync(not_after, cfg.cert_dir)
    now = dt.datetime.now(dt.UTC)
    last = facts.last_end
    migration = facts.last_migration
    return {
        "registered": facts.host is not None,
        "management_server": facts.host,
        "since": _iso(facts.since),
        "last_disconnect": None
        if last is None
        else {
            "host": last.host,
            "outcome": last.outcome,
            "reason": last.reason,
            "at": _iso(last.at),
        },
        "failovers": facts.failovers,
        "host_id": live.get("host_id"),
        "guid": cfg.host_guid,
        "secured": facts.secured,
        "secured_reasons": list(facts.secured_reasons),
        "certificate": {
            "path": str(cfg.cert_dir / CERT_FILE),
            "not_after": _iso(expires),
            "days_left": (expires - now).days if expires is not None else None,
        },
        "libvirt": {
            "uri": cfg.hypervisor_uri,
            "connected": facts.libvirt_connected,
            "error": facts.libvirt_error,
        },
        "commands_in_flight": live.get("commands_in_flight", 0),
        "commands_answered": facts.commands,
        "migrations_running": live.get("migrations_running", 0),
        "last_migration": None
        if migration is None
        else {
            "vm": migration.vm,
            "dest": migration.dest,
            "outcome": migration.outcome,
            "seconds": round(migration.seconds, 2),
            "details": migration.details,
            "ended": _iso(migration.ended),
        },
        "metrics": live.get("metrics"),
        "agent": {
            "version": __version__,
            "pid": os.getpid(),
            "started": _iso(facts.started),
            "config": str(cfg.path) if cfg.path is not None else None,
        },
    }


def _bind_atomically(path: Path) -> tuple[socket.socket, int]:
    """A listening socket at ``path``, 0600 before it appears there; and its inode."""
    private = Path(tempfile.mkdtemp(prefix=".status-", dir=path.parent))  # 0700
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        staged = private / "s"
        with short_address(staged) as address:
            sock.bind(address)
        os.chmod(staged, 0o600)
        sock.listen(16)
        os.replace(staged, path)
        return sock, os.stat(path).st_ino
    except BaseException:
        sock.close()
        raise
    finally:
        with contextlib.suppress(OSError):
            (private / "s").unlink()
        with contextlib.suppress(OSError):
            private.rmdir()


def _peer_uid(sock: trio.socket.SocketType) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


async def serve(
    source: StatusSource,
    *,
    task_status: trio.TaskStatus[Path | None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer status requests on <state.dir>/status.sock until cancelled; the socket is
    removed at the end. Starts with its path, or None if it could not be made (logged:
    the agent works on without it)."""
    path = socket_path(source.config.state_dir)
    try:
        raw, inode = await trio.to_thread.run_sync(_bind_atomically, path)
    except OSError as exc:
        log.error("cannot create the status socket", path=str(path), error=exc.strerror or str(exc))
        task_status.started(None)
        return
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(raw))

    async def answer(stream: trio.SocketStream) -> None:
        await _answer(source, stream)

    task_status.started(path)
    try:
        await trio.serve_listeners(answer, [listener])
    finally:
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == inode:  # ours, not a newer agent's
                path.unlink()


async def _answer(source: StatusSource, stream: trio.SocketStream) -> None:
    try:
        with trio.move_on_after(SERVE_SECONDS):
            uid = _peer_uid(stream.socket)
            if uid not in (0, os.geteuid()):
                log.warning("status request refused: another user", uid=uid)
                return
            document = await snapshot(source)
            await stream.send_all(json.dumps(document).encode() + b"\n")
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass  # the client went away: its loss
    except Exception:  # a bug in the status must not stop the agent
        log.exception("status request failed")
    finally:
        await stream.aclose()
