"""Runtime state kept under state.dir (never /etc): the host's identity and MS list."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import structlog
import trio
from attrs import frozen

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
    def __init__(self, directory: Path) -> None:
        self.path = directory / STATE_FILE
        self.current = AgentState()
        self._lock = trio.Lock()

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
                await trio.to_thread.run_sync(lambda: atomic_write(self.path, data, mode=0o644))
                self.current = new
            return new
