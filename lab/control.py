"""The lab MS's control API and its command line (``python -m lab.mgmt``).

The control API is newline-delimited JSON over a unix socket, one reply line per request
line. Commands and answers travel as body items, ``{"<java class>": {fields}}``:

* ``{"op": "send", "host": GUID_OR_ID, "commands": [items], "timeout": s}``
  -> ``{"ok": true, "answers": [items]}``
* ``{"op": "hosts"}`` -> ``{"ok": true, "hosts": [records]}``
* ``{"op": "migrate", "vm": NAME, "source": H, "destination": H, "timeout": s}`` (optional
  ``"vm_to"``: the VirtualMachineTO; ``"storage"``: migrateStorage, volume path -> disk info)
  -> ``{"ok": true, "answer": item, "steps": [each command, answer and MS verdict],
  "migrated": bool}``
* ``{"op": "connects"}`` -> ``{"ok": true, "connects": [each run of the connect sequence]}``
* ``{"op": "stats"}`` -> ``{"ok": true, "stats": {what the statistics cycle collected}}``
* ``{"op": "latencies", "since": t, "until": t}`` -> ``{"ok": true, "latencies": {command:
  [seconds]}}``: answer times of the statistics commands sent between those wall-clock times
* ``{"op": "track_volume", "pool": UUID, "path": PATH, "vm": NAME}`` -> ``{"ok": true}``
* ``{"op": "disconnect", "host": GUID_OR_ID}`` -> ``{"ok": true}`` (the MS closes the link)

Any failure is ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import attrs
import structlog
import trio
from attrs import define

from lab.ms import BARE, LabError, ManagementServer, lab_zone
from protocol import Message, RemoteProtocolError
from protocol.codec import decode_array, from_json, to_json
from protocol.messages.migration import MigrateDiskInfo

MAX_LINE: Final = 16 * 1024 * 1024
_log = structlog.get_logger("lab.control")


class ControlError(LabError):
    """A control request or reply was malformed, or the control socket is unusable."""


def body_items(messages: Sequence[Message]) -> list[dict[str, Any]]:
    return [{m.java_class: to_json(m)} for m in messages]


class _LineReader:
    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = bytearray()

    async def readline(self) -> bytes | None:
        """The next line without its newline; None at the end of the stream."""
        scanned = 0
        while True:
            end = self._buffer.find(b"\n", scanned)
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                return line
            scanned = len(self._buffer)
            if scanned > MAX_LINE:
                raise ControlError(f"control line longer than {MAX_LINE} bytes")
            data = await self._stream.receive_some(65536)
            if not data:
                line = bytes(self._buffer)
                self._buffer.clear()
                return line or None
            self._buffer += data


def _field(request: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = request.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ControlError(f"request field {name!r} is missing or of the wrong type")
    return value


def _timeout(request: dict[str, Any], default: float) -> float:
    value = request.get("timeout", default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ControlError("request field 'timeout' must be a positive number")
    return float(value)


@define
class ControlServer:
    ms: ManagementServer
    path: Path

    async def serve(self, *, task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED) -> None:
        listener = await _unix_listener(self.path)
        try:
            _log.info("control API listening", path=str(self.path))
            task_status.started(self.path)
            await trio.serve_listeners(self._serve_client, [listener])
        finally:
            self.path.unlink(missing_ok=True)

    async def _serve_client(self, stream: trio.SocketStream) -> None:
        async with stream:
            reader = _LineReader(stream)
            try:
                while (line := await reader.readline()) is not None:
                    reply = await self.handle(line)
                    await stream.send_all(json.dumps(reply).encode("utf-8") + b"\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError, ControlError) as exc:
                _log.info("control client dropped", reason=str(exc))

    async def handle(self, line: bytes) -> dict[str, Any]:
        """One request line -> its reply; every failure becomes ``ok: false``."""
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ControlError("a control request must be a JSON object")
            return {"ok": True, **await self._run(request)}
        except (LabError, RemoteProtocolError, TimeoutError, ValueError) as exc:
            # ValueError covers bad JSON; texts name what failed, never field values.
            return {"ok": False, "error": str(exc) or type(exc).__name__}

    async def _run(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "send":
            commands = decode_array(request.get("commands"))
            stop_on_error = request.get("stop_on_error", True)
            if not isinstance(stop_on_error, bool):
                raise ControlError("request field 'stop_on_error' must be a boolean")
            answers = await self.ms.send_command(
                _field(request, "host", (str, int)),
                commands,
                stop_on_error=stop_on_error,
                timeout=_timeout(request, 60),
            )
            return {"answers": body_items(answers)}
        if op == "hosts":
            connected = set(self.ms.connected())
            pings = self.ms.liveness.pings
            hosts = [
                {
                    **attrs.asdict(r),
                    "secured": r.secured,
                    "connected": r.guid in connected,
                    "pings": pings.get(r.id, 0),
                    "pools": sorted(p for p, refs in self.ms.pool_refs.items() if r.guid in refs),
                    # The VMs the host's last ping listed (hostVmStateReport).
                    "vms": sorted(self.ms.vm_reports.get(r.guid, {})),
                }
                for r in self.ms.db.all()
            ]
            return {"hosts": hosts}
        if op == "connects":
            return {"connects": [c.summary() for c in self.ms.connects]}
        if op == "stats":
            return {"stats": self.ms.stats.summary()}
        if op == "latencies":
            since, until = request.get("since", 0), request.get("until", math.inf)
            if not all(
                isinstance(t, int | float) and not isinstance(t, bool) for t in (since, until)
            ):
                raise ControlError("request fields 'since' and 'until' must be numbers")
            return {"latencies": self.ms.stats.latencies(since, until)}
        if op == "disconnect":
            await self.ms.disconnect(_field(request, "host", (str, int)))
            return {}
        if op == "track_volume":
            self.ms.track_volume(
                _field(request, "pool", str),
                _field(request, "path", str),
                _field(request, "vm", str),
            )
            return {}
        if op == "migrate":
            vm_to = request.get("vm_to")
            storage = request.get("storage")
            if vm_to is not None and not isinstance(vm_to, dict):
                raise ControlError("request field 'vm_to' must be a VirtualMachineTO object")
            if storage is not None and not isinstance(storage, dict):
                raise ControlError("request field 'storage' must map volume paths to disk infos")
            migration = await self.ms.migrate(
                _field(request, "vm", str),
                _field(request, "source", str),
                _field(request, "destination", str),
                timeout=_timeout(request, 600),
                vm_to=vm_to,
                migrate_storage={
                    k: from_json(MigrateDiskInfo, v, f"storage[{k}]")
                    for k, v in (storage or {}).items()
                },
            )
            return {
                "answer": body_items([migration.answer])[0],
                "steps": [s.summary() for s in migration.steps],
                "migrated": migration.migrated,
            }
        raise ControlError(
            f"unknown op {op!r:.40}; expected send, hosts, migrate, connects, stats or track_volume"
        )


async def _unix_listener(path: Path) -> trio.SocketListener:
    if path.is_socket():
        path.unlink()  # left behind by a server that did not exit cleanly
    elif path.exists():
        raise ControlError(f"{path} exists and is not a socket")
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(os.fspath(path))
        # Whoever reaches this socket can send any command to any host.
        os.chmod(path, 0o600)
        sock.listen()
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


async def control_request(path: Path, request: dict[str, Any]) -> dict[str, Any]:
    """Send one control request and return its reply (OSError if nobody listens)."""
    stream = await trio.open_unix_socket(os.fspath(path))
    async with stream:
        await stream.send_all(json.dumps(request).encode("utf-8") + b"\n")
        line = await _LineReader(stream).readline()
    if line is None:
        raise ControlError("the management server closed the control connection")
    reply = json.loads(line)
    if not isinstance(reply, dict):
        raise ControlError("the control reply is not a JSON object")
    return reply


# --- the command line -------------------------------------------------------------------


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lab.mgmt", description="The lab CloudStack management server."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve agents on the MS port")
    serve.add_argument("--listen", type=_host_port, default=("127.0.0.1", 8250))
    serve.add_argument("--state-dir", type=Path, required=True)
    serve.add_argument("--ping-interval", type=int, default=60)
    serve.add_argument("--control", type=Path, help="default: STATE_DIR/control.sock")
    serve.add_argument("--mgmt-id", type=int)
    serve.add_argument("--require-client-cert", action="store_true")
    serve.add_argument(
        "--ms-host", action="append", dest="ms_hosts", help="msHostList entry (repeatable)"
    )
    serve.add_argument(
        "--zone",
        choices=("bare", "lab"),
        default="bare",
        help="bare: ReadyCommands only; lab: the real connect sequence with the two-host "
        "lab's traffic labels and shared pool",
    )
    serve.add_argument(
        "--stats-interval", type=float, default=0, help="seconds between statistics cycles"
    )
    serve.add_argument("--alert-wait", type=float, default=0, help="the MS's alert.wait (s)")

    send = sub.add_parser("send", help="send commands to a host and print the answers")
    send.add_argument("--control", type=Path, required=True)
    send.add_argument("--host", required=True, help="host guid or id")
    send.add_argument("--timeout", type=float, default=60)
    send.add_argument("body", help='a body item, e.g. {"com.cloud.agent.api.X":{}}, or a list')

    hosts = sub.add_parser("hosts", help="list the hosts")
    hosts.add_argument("--control", type=Path, required=True)

    migrate = sub.add_parser("migrate", help="live-migrate a VM")
    migrate.add_argument("--control", type=Path, required=True)
    migrate.add_argument("--vm", required=True)
    migrate.add_argument("--source", required=True)
    migrate.add_argument("--destination", required=True)
    migrate.add_argument("--timeout", type=float, default=600)
    return parser


async def _serve(args: argparse.Namespace) -> None:
    host, port = args.listen
    ms = ManagementServer.create(
        state_dir=args.state_dir,
        host=host,
        port=port,
        ping_interval=args.ping_interval,
        mgmt_id=args.mgmt_id,
        require_client_cert=args.require_client_cert,
        ms_host_list=args.ms_hosts,
        zone=(lab_zone() if args.zone == "lab" else BARE).evolve(
            stats_interval=args.stats_interval
        ),
        alert_wait=args.alert_wait,
    )
    control = ControlServer(ms, args.control or args.state_dir / "control.sock")
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(ms.serve)
            await nursery.start(control.serve)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    _log.info("stopping", signal=signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break
    finally:
        ms.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        trio.run(_serve, args)
        return 0
    request: dict[str, Any] = {"op": args.command}
    if args.command == "send":
        try:
            body = json.loads(args.body)
        except ValueError as exc:
            print(f"the body is not JSON: {exc}", file=sys.stderr)
            return 2
        request.update(host=args.host, commands=body if isinstance(body, list) else [body])
        request["timeout"] = args.timeout
    elif args.command == "migrate":
        request.update(vm=args.vm, source=args.source, destination=args.destination)
        request["timeout"] = args.timeout
    try:
        reply = trio.run(control_request, args.control, request)
    except (OSError, ControlError, ValueError) as exc:
        print(f"control API at {args.control}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(reply, indent=2))
    return 0 if reply.get("ok") else 1
