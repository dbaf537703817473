"""Command handlers: a registry from message class to an async function returning an answer.

Handlers get a :class:`CommandContext` through which they reach the agent's services and
the session the command came on. Later capabilities (migration, certificates) register
their own handlers; anything without one is answered with UnsupportedAnswer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from attrs import frozen

from agent import certificates
from agent.certs import system_pki
from agent.config import LbAlgorithm, parse_algorithm
from protocol.messages.certificates import SetupCertificateCommand, SetupKeyStoreCommand
from protocol.messages.host import (
    CheckHealthAnswer,
    CheckHealthCommand,
    MaintainAnswer,
    MaintainCommand,
    MigrateAgentConnectionAnswer,
    MigrateAgentConnectionCommand,
    ReadyAnswer,
    ReadyCommand,
    SetupMSListAnswer,
    SetupMSListCommand,
    ShutdownCommand,
)
from protocol.messages.migration import MigrateCommand, PrepareForMigrationCommand
from protocol.model import Answer, Message

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from agent.hypervisor.connection import Hypervisor
    from agent.hypervisor.migration.engine import Migrations
    from agent.state import StateStore
    from agent.tasks import TaskQueue


class AgentControl(Protocol):
    """What handlers may ask of the agent as a whole."""

    config: AgentConfig
    hypervisor: Hypervisor
    state: StateStore
    tasks: TaskQueue
    migrations: Migrations

    async def secured(self, config: AgentConfig | None = None) -> bool: ...

    async def set_ms_hosts(
        self,
        hosts: Sequence[str],
        algorithm: LbAlgorithm | None,
        lb_check_interval: float | None,
    ) -> tuple[str, ...]:
        """Adopt a list from the MS; returns the entries kept (invalid ones are skipped)."""
        ...

    def stop_by_ms(self, reason: str) -> None: ...

    def schedule_tls_reload(self) -> None: ...


class SessionControl(Protocol):
    """What handlers may ask of the session the command arrived on."""

    async def ready(self, command: ReadyCommand) -> None: ...

    def end(self, reason: str, *, retry_same_host_later: bool, sequence: int) -> None:
        """End the session once the answer to request ``sequence`` has been sent."""


@frozen
class CommandContext:
    agent: AgentControl
    session: SessionControl
    sequence: int
    # The configuration as the command started: one command never sees two of them.
    config: AgentConfig

    def end_session(self, reason: str, *, retry_same_host_later: bool) -> None:
        """End the session once this command's answer has been sent."""
        self.session.end(
            reason, retry_same_host_later=retry_same_host_later, sequence=self.sequence
        )


Handler = Callable[[Any, CommandContext], Awaitable[Message]]


class HandlerRegistry:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, message_type: type[Message] | str, handler: Handler) -> None:
        name = message_type if isinstance(message_type, str) else message_type.JAVA_CLASS
        self._handlers[name] = handler

    def get(self, java_class: str) -> Handler | None:
        return self._handlers.get(java_class)

    @classmethod
    def with_builtins(cls) -> HandlerRegistry:
        registry = cls()
        registry.register(CheckHealthCommand, check_health)
        registry.register(MaintainCommand, maintain)
        registry.register(ReadyCommand, ready)
        registry.register(SetupMSListCommand, setup_ms_list)
        registry.register(MigrateAgentConnectionCommand, migrate_agent_connection)
        registry.register(ShutdownCommand, shutdown_from_ms)
        registry.register(MigrateCommand, migrate)
        registry.register(PrepareForMigrationCommand, prepare_for_migration)
        registry.register(SetupKeyStoreCommand, certificates.setup_keystore)
        registry.register(SetupCertificateCommand, certificates.setup_certificate)
        return registry


async def check_health(cmd: CheckHealthCommand, ctx: CommandContext) -> Message:
    if await ctx.agent.hypervisor.healthy():
        return CheckHealthAnswer(result=True, details="resource is alive")
    error = ctx.agent.hypervisor.last_error or "no connection"
    return CheckHealthAnswer(result=False, details=f"resource is not alive: libvirt: {error}")


async def maintain(cmd: MaintainCommand, ctx: CommandContext) -> Message:
    # Maintenance is the MS's business (it migrates VMs away); running work is not touched.
    return MaintainAnswer(result=True, will_migrate=True)


async def ready(cmd: ReadyCommand, ctx: CommandContext) -> Message:
    if cmd.details is not None:
        ctx.end_session(
            f"management server refused the host: {cmd.details}", retry_same_host_later=True
        )
        return Answer(result=False, details="host refused by the management server")
    await ctx.session.ready(cmd)
    return ReadyAnswer(result=True)


async def setup_ms_list(cmd: SetupMSListCommand, ctx: CommandContext) -> Message:
    if not cmd.ms_list:
        return SetupMSListAnswer(result=False, details="empty management server list")
    kept = await ctx.agent.set_ms_hosts(
        cmd.ms_list,
        parse_algorithm(cmd.lb_algorithm),
        float(cmd.lb_check_interval) if cmd.lb_check_interval is not None else None,
    )
    if not kept:
        return SetupMSListAnswer(
            result=False, details="no valid host name or address in the management server list"
        )
    if cmd.trigger_host_lb:
        ctx.end_session(
            "management server asked for host load balancing", retry_same_host_later=False
        )
    return SetupMSListAnswer(result=True)


async def migrate_agent_connection(
    cmd: MigrateAgentConnectionCommand, ctx: CommandContext
) -> Message:
    if not cmd.ms_list:
        return MigrateAgentConnectionAnswer(
            result=False, details="Migrate agent connection failed, due to an empty MS list"
        )
    kept = await ctx.agent.set_ms_hosts(
        cmd.ms_list,
        parse_algorithm(cmd.lb_algorithm),
        float(cmd.lb_check_interval) if cmd.lb_check_interval is not None else None,
    )
    if not kept:
        return MigrateAgentConnectionAnswer(
            result=False,
            details="Migrate agent connection failed: no valid host name or address in the list",
        )
    ctx.end_session("management server moved this agent to a new list", retry_same_host_later=False)
    return MigrateAgentConnectionAnswer(result=True)


async def shutdown_from_ms(cmd: ShutdownCommand, ctx: CommandContext) -> Message:
    ctx.agent.stop_by_ms(f"{cmd.reason or 'unknown'}: {cmd.detail or ''}".strip(": "))
    return Answer(result=True)


async def migrate(cmd: MigrateCommand, ctx: CommandContext) -> Message:
    secured = await ctx.agent.secured(ctx.config)
    return await ctx.agent.migrations.migrate(cmd, secured=secured, config=ctx.config)


async def prepare_for_migration(cmd: PrepareForMigrationCommand, ctx: CommandContext) -> Message:
    secured = await ctx.agent.secured(ctx.config)
    root = ctx.config.pki_root
    return await ctx.agent.migrations.prepare(
        cmd,
        missing_tls_files=system_pki.missing(root, system_pki.MIGRATION_TLS_FILES)
        if secured
        else [],
        config=ctx.config,
    )
