"""Runtime state kept under state.dir (never /etc): the host's identity and MS list."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

import attrs
import structlog
import trio
from attrs import frozen

from agent.config import ConfigError
from agent.fsutil import atomic_write

log = structlog.get_logger("agent.state")
STATE_FILE = "agent-state.json"


def _hosts(value: object) -> tuple[str, ...] | None:
    return tuple(str(h) for h in value) if isinstance(value, list | tuple) else None


@frozen
class AgentState:
    host_id: int | None = None
    host_uuid: str | None = None
    host_name: str | None = None
    # Set by the MS (ReadyCommand, SetupMSListCommand); replaces agent.properties' list.
    ms_hosts: tuple[str, ...] | None = attrs.field(default=None, converter=_hosts)
    lb_algorithm: str | None = None
    lb_check_interval: float | None = None


class StateStore:
    """The state file is a cache: losing it costs a re-registration, so a failed write is
    logged and the agent carries on with the state in memory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / STATE_FILE
        self.current = AgentState()
        self._lock = trio.Lock()
        self._dir_fd: int | None = None

    def acquire(self) -> None:
        """Create state.dir and hold it for this process; ConfigError if another agent does.

        flock on the directory itself: it works on a read-only directory, and the kernel
        drops it when the process dies, however it dies.
        """
        where = f"state.dir {self.directory}"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise ConfigError(
                f"{where} cannot be used: {exc.strerror or exc}; check the path and that its "
                "parent directories exist and are directories"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if isinstance(exc, BlockingIOError):
                raise ConfigError(
                    f"another kvm-agent is already running with {where}: two agents would "
                    "register the same host; stop the other one first"
                ) from None
            raise ConfigError(f"{where} cannot be locked: {exc.strerror or exc}") from None
        self._dir_fd = fd

    def release(self) -> None:
        fd, self._dir_fd = self._dir_fd, None
        if fd is not None:
            os.close(fd)

    def load(self) -> AgentState:
        try:
            data = json.loads(self.path.read_text())
            self.current = AgentState(**{k: data.get(k) for k in attrs.fields_dict(AgentState)})
        except FileNotFoundError:
            self.current = AgentState()
        except (OSError, ValueError, TypeError) as exc:
            # A damaged state file costs only a re-registration; do not refuse to start.
            log.warning(
                "state file unreadable, starting afresh", path=str(self.path), error=str(exc)
            )
            self.current = AgentState()
        return self.current

    async def update(self, **changes: Any) -> AgentState:
        """Change the state and write it (in a worker thread: the write fsyncs)."""
        async with self._lock:  # writes land in the order the changes were made
            new = attrs.evolve(self.current, **changes)
            if new != self.current:
                data = json.dumps(attrs.asdict(new), indent=2).encode()
                try:
                    await trio.to_thread.run_sync(lambda: atomic_write(self.path, data, mode=0o644))
                except OSError as exc:
                    log.error(
                        "cannot write the state file; the agent keeps the state in memory "
                        "(a restart would register afresh): check state.dir",
                        path=str(self.path),
                        error=f"{type(exc).__name__}: {exc.strerror or exc}",
                    )
                self.current = new
            return new
