"""The host and its connection: health, maintenance, ready, MS lists, shutdown."""

from __future__ import annotations

from typing import Protocol

from agent.handlers import handler
from agent.handlers.context import (
    AgentLifecycle,
    HypervisorHealth,
    MsListControl,
    SessionControl,
)
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
from protocol.model import Answer, Message


class HostContext(Protocol):
    """What the host's handlers use."""

    @property
    def hypervisor(self) -> HypervisorHealth: ...

    @property
    def session(self) -> SessionControl: ...

    @property
    def ms_list(self) -> MsListControl: ...

    @property
    def lifecycle(self) -> AgentLifecycle: ...

    def end_session(self, reason: str, *, retry_same_host_later: bool) -> None: ...


@handler(CheckHealthCommand)
async def check_health(cmd: CheckHealthCommand, ctx: HostContext) -> Message:
    if await ctx.hypervisor.healthy():
        return CheckHealthAnswer(result=True, details="resource is alive")
    error = ctx.hypervisor.last_error or "no connection"
    return CheckHealthAnswer(result=False, details=f"resource is not alive: libvirt: {error}")


@handler(MaintainCommand)
async def maintain(cmd: MaintainCommand, ctx: HostContext) -> Message:
    # Maintenance is the MS's business (it migrates VMs away); running work is not touched.
    return MaintainAnswer(result=True, will_migrate=True)


@handler(ReadyCommand)
async def ready(cmd: ReadyCommand, ctx: HostContext) -> Message:
    if cmd.details is not None:
        ctx.end_session(
            f"management server refused the host: {cmd.details}", retry_same_host_later=True
        )
        return Answer(result=False, details="host refused by the management server")
    await ctx.session.ready(cmd)
    return ReadyAnswer(result=True)


@handler(SetupMSListCommand)
async def setup_ms_list(cmd: SetupMSListCommand, ctx: HostContext) -> Message:
    if not cmd.ms_list:
        return SetupMSListAnswer(result=False, details="empty management server list")
    kept = await ctx.ms_list.adopt(cmd.ms_list, cmd.lb_algorithm, cmd.lb_check_interval)
    if not kept:
        return SetupMSListAnswer(
            result=False, details="no valid host name or address in the management server list"
        )
    if cmd.trigger_host_lb:
        ctx.end_session(
            "management server asked for host load balancing", retry_same_host_later=False
        )
    return SetupMSListAnswer(result=True)


@handler(MigrateAgentConnectionCommand)
async def migrate_agent_connection(cmd: MigrateAgentConnectionCommand, ctx: HostContext) -> Message:
    if not cmd.ms_list:
        return MigrateAgentConnectionAnswer(
            result=False, details="Migrate agent connection failed, due to an empty MS list"
        )
    kept = await ctx.ms_list.adopt(cmd.ms_list, cmd.lb_algorithm, cmd.lb_check_interval)
    if not kept:
        return MigrateAgentConnectionAnswer(
            result=False,
            details="Migrate agent connection failed: no valid host name or address in the list",
        )
    ctx.end_session("management server moved this agent to a new list", retry_same_host_later=False)
    return MigrateAgentConnectionAnswer(result=True)


@handler(ShutdownCommand)
async def shutdown_from_ms(cmd: ShutdownCommand, ctx: HostContext) -> Message:
    ctx.lifecycle.stop_by_ms(f"{cmd.reason or 'unknown'}: {cmd.detail or ''}".strip(": "))
    return Answer(result=True)
