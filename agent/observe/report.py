"""``kvm-agent status``: ask the running agent (agent.observe.status) and say it.

Exit codes: 0 registered with a management server; 1 the agent runs but is not
registered (the reason is printed); 3 the agent is not running; 4 its status could not
be read (permissions, a time-out, an unreadable answer). A person gets lines to read,
a script ``--json``: the agent's document as is, or ``{"running": false, "error": ...}``.

Plain blocking sockets: the tool imports no trio, no libvirt.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import socket
from pathlib import Path
from typing import Any, TextIO

from agent.observe.unixsock import short_address, socket_path

EXIT_REGISTERED = 0
EXIT_NOT_REGISTERED = 1
EXIT_NOT_RUNNING = 3
EXIT_UNKNOWN = 4
TIMEOUT = 10.0
MAX_ANSWER = 1 << 20


class StatusUnavailable(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def query(state_dir: Path, timeout: float = TIMEOUT) -> dict[str, Any]:
    """The running agent's status document (StatusUnavailable with the exit code)."""
    path = socket_path(state_dir)
    if not path.exists():
        raise StatusUnavailable(
            f"the agent is not running (no status socket {path}; is state.dir right?)",
            EXIT_NOT_RUNNING,
        )
    data = b""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            with short_address(path) as address:
                sock.connect(address)
            while len(data) <= MAX_ANSWER and (chunk := sock.recv(65536)):
                data += chunk
    except (ConnectionRefusedError, FileNotFoundError):
        raise StatusUnavailable(
            f"the agent is not running (nothing listens on {path}: a stale socket)",
            EXIT_NOT_RUNNING,
        ) from None
    except PermissionError:
        raise StatusUnavailable(
            f"cannot read the agent's status: permission denied on {path} (run as root)",
            EXIT_UNKNOWN,
        ) from None
    except TimeoutError:
        raise StatusUnavailable(
            f"the agent did not answer on {path} within {timeout:g}s", EXIT_UNKNOWN
        ) from None
    except OSError as exc:
        raise StatusUnavailable(
            f"cannot read the agent's status on {path}: "
            f"{exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))}",
            EXIT_UNKNOWN,
        ) from None
    try:
        document = json.loads(data)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        reason = "no answer" if not data else "an unreadable answer"
        raise StatusUnavailable(f"the agent gave {reason} on {path}", EXIT_UNKNOWN)
    return document


def not_registered_reason(doc: dict[str, Any]) -> str:
    last = doc.get("last_disconnect")
    if not last:
        return "not registered yet (connecting)"
    when = _when(last.get("at"))
    if last.get("outcome") == "unreachable":
        return f"{last.get('reason')} ({when})"
    return (
        f"the session with {last.get('host')} ended ({last.get('outcome')}, {when}): "
        f"{last.get('reason')}"
    )


def _when(iso: str | None) -> str:
    if not iso:
        return "?"
    when = dt.datetime.fromisoformat(iso)
    return f"{when:%Y-%m-%d %H:%M:%S} UTC"


def _ago(iso: str | None) -> str:
    if not iso:
        return ""
    seconds = int((dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(iso)).total_seconds())
    days, rest = divmod(max(seconds, 0), 86400)
    hours, rest = divmod(rest, 3600)
    text = (
        f"{days}d {hours}h"
        if days
        else f"{hours}h {rest // 60:02d}m"
        if hours
        else f"{rest // 60}m {rest % 60:02d}s"
    )
    return f" ({text} ago)"


def human(doc: dict[str, Any]) -> str:
    """The status as lines for a person; the first says registered or why not."""
    rows: list[tuple[str, str]] = []
    if doc.get("registered"):
        head = "registered"
        rows.append(
            (
                "management server",
                f"{doc['management_server']}, since {_when(doc['since'])}{_ago(doc['since'])}",
            )
        )
    else:
        head = f"NOT registered: {not_registered_reason(doc)}"
    rows.append(("host id", f"{doc.get('host_id') or 'none yet'} (guid {doc.get('guid')})"))
    secured = doc.get("secured")
    if secured is None:
        rows.append(("secured", "not evaluated yet (at registration)"))
    else:
        reasons = "; ".join(doc.get("secured_reasons") or [])
        rows.append(("secured", "yes" if secured else f"NO: {reasons or 'no reason given'}"))
    cert = doc.get("certificate") or {}
    if cert.get("not_after"):
        left = cert.get("days_left")
        state = "EXPIRED" if left is not None and left < 0 else f"{left} days left"
        rows.append(
            ("certificate", f"{cert['path']}, valid until {_when(cert['not_after'])} ({state})")
        )
    else:
        rows.append(("certificate", f"none readable at {cert.get('path')}"))
    libvirt = doc.get("libvirt") or {}
    rows.append(
        (
            "libvirt",
            f"connected ({libvirt.get('uri')})"
            if libvirt.get("connected")
            else f"NOT connected ({libvirt.get('uri')}): {libvirt.get('error') or 'connecting'}",
        )
    )
    rows.append(
        (
            "commands",
            f"{doc.get('commands_in_flight', 0)} in flight, {doc.get('commands_answered', 0)} "
            f"answered since start; {doc.get('migrations_running', 0)} migrations running",
        )
    )
    migration = doc.get("last_migration")
    if migration:
        text = (
            f"{migration['vm']} to {migration['dest']}: {migration['outcome']} in "
            f"{migration['seconds']}s, {_when(migration['ended'])}"
        )
        if migration.get("outcome") != "completed" and migration.get("details"):
            text += f" — {migration['details']}"
        rows.append(("last migration", text))
    else:
        rows.append(("last migration", "none since start"))
    if doc.get("failovers"):
        rows.append(("failovers", str(doc["failovers"])))
    metrics = doc.get("metrics") or {}
    rows.append(("metrics", metrics.get("url") or metrics.get("error") or "off"))
    agent = doc.get("agent") or {}
    rows.append(
        (
            "agent",
            f"kvm-agent {agent.get('version')}, pid {agent.get('pid')}, started "
            f"{_when(agent.get('started'))}{_ago(agent.get('started'))}",
        )
    )
    width = max(len(k) for k, _ in rows)
    return "\n".join([f"kvm-agent: {head}", *(f"  {k:<{width}}  {v}" for k, v in rows)])


def run(state_dir: Path, *, as_json: bool, out: TextIO, err: TextIO) -> int:
    try:
        doc = query(state_dir)
    except StatusUnavailable as exc:
        if as_json:
            running = False if exc.code == EXIT_NOT_RUNNING else None  # None: cannot tell
            out.write(json.dumps({"running": running, "error": str(exc)}))
            out.write("\n")
        print(f"kvm-agent: {exc}", file=err)
        return exc.code
    out.write((json.dumps(doc, indent=2) if as_json else human(doc)) + "\n")
    return EXIT_REGISTERED if doc.get("registered") else EXIT_NOT_REGISTERED
