"""What the dispatcher hands a handler (CommandContext), and the services' narrow faces.

A handler does not declare CommandContext as its context parameter but its room's Protocol
(HostContext, MigrationContext, CertificateContext... in the room's module): the few things
that room uses. ``@handler`` checks, through mypy, that CommandContext has all of them; so
a room's needs are written down where its handlers are, and no handler can reach the Agent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from attrs import frozen

from agent.config import AgentConfig
from agent.ha.heartbeat import Heartbeat
from agent.hostparams import Applied
from agent.hypervisor.connection import Hypervisor
from agent.hypervisor.migration.engine import Migrations
from agent.hypervisor.pools import Pools
from agent.hypervisor.stats import Statistics
from agent.hypervisor.volumes import Volumes
from protocol.messages.host import ReadyCommand


class SessionControl(Protocol):
    """The session the command arrived on."""

    async def ready(self, command: ReadyCommand) -> None:
        """The MS accepted the host: keep its identity, adopt its MS list, start serving."""
        ...

    def end(self, reason: str, *, retry_same_host_later: bool, sequence: int) -> None:
        """End the session once the answer to request ``sequence`` has been sent."""
        ...


class HypervisorHealth(Protocol):
    @property
    def last_error(self) -> str | None: ...

    async def healthy(self) -> bool: ...


class MsListControl(Protocol):
    async def adopt(
        self, hosts: Sequence[str], lb_algorithm: str | None, lb_check_interval: float | None
    ) -> tuple[str, ...]:
        """A list from the MS, its fields as the command carries them; returns the entries
        kept (invalid ones skipped; with none left the current list stays)."""
        ...


class AgentLifecycle(Protocol):
    def stop_by_ms(self, reason: str) -> None:
        """The MS's ShutdownCommand: stop, with the exit code systemd does not restart."""
        ...


class TlsReload(Protocol):
    def schedule(self) -> None:
        """A new certificate is installed: reload libvirtd's TLS once no command runs, then
        register again."""
        ...


class HostParamsControl(Protocol):
    def apply(self, params: Mapping[str, str]) -> Applied:
        """SetHostParamsCommand's values: installed over agent.properties' until restart."""
        ...


@frozen
class CommandContext:
    """One per command. ``config`` is the configuration as the command started: one command
    never sees two of them (SIGHUP swaps it whole)."""

    sequence: int
    config: AgentConfig
    session: SessionControl
    hypervisor: Hypervisor
    migrations: Migrations
    ms_list: MsListControl
    lifecycle: AgentLifecycle
    tls_reload: TlsReload
    host_params: HostParamsControl
    stats: Statistics
    pools: Pools
    heartbeat: Heartbeat
    volumes: Volumes

    def end_session(self, reason: str, *, retry_same_host_later: bool) -> None:
        """End the session once this command's answer has been sent."""
        self.session.end(
            reason, retry_same_host_later=retry_same_host_later, sequence=self.sequence
        )
