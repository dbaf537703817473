"""HA: CheckOnHostCommand and FenceCommand, answered from the suspect host's heartbeat.

CheckOnHost: a 4.21 MS (KVMInvestigator.isAgentAlive, KVMHostActivityChecker) reads
``result`` only, whatever the class: **true = the suspect is Down**. The 4.21 Java agent
answers a plain Answer (false "Heart is beating...", or true). This agent answers a
``CheckOnHostAnswer`` with that same ``result``, and ``determined``/``alive`` filled
(alive = beating): the same for a 4.21 MS, and right too for an MS that casts the answer and
reads ``isAlive()`` when ``result`` is true.

Fence: a **FenceAnswer** (KVMFencer casts to it): true = the suspect's heartbeat is dead, so
its VMs may be restarted elsewhere; "fencing" here means confirming it, nothing is killed.

Unlike the Java agent, a host that watches no heartbeat pool says it cannot tell (result
false: Up for CheckOnHost, not fenced for Fence) instead of "Down": without a heartbeat to
read, a Down would let HA start VMs that may still run.
"""

from __future__ import annotations

from typing import Protocol

from agent.ha.beat import HeartbeatError
from agent.ha.heartbeat import HostCheck
from agent.handlers import handler
from protocol.messages.ha import CheckOnHostAnswer, CheckOnHostCommand, FenceAnswer, FenceCommand
from protocol.messages.to import HostTO
from protocol.model import Message


class HeartbeatReader(Protocol):
    async def check_host(
        self, ip: str | None, *, stop_at_first_dead: bool = False
    ) -> HostCheck: ...


class HaContext(Protocol):
    @property
    def heartbeat(self) -> HeartbeatReader: ...


def _private_ip(host: HostTO | None) -> str | None:
    return host.private_network.ip if host and host.private_network else None


@handler(CheckOnHostCommand)
async def check_on_host(cmd: CheckOnHostCommand, ctx: HaContext) -> Message:
    try:
        check = await ctx.heartbeat.check_host(
            _private_ip(cmd.host),
            stop_at_first_dead=cmd.report_check_failure_if_one_storage_is_down,
        )
    except HeartbeatError as exc:
        return CheckOnHostAnswer(result=False, details=f"CheckOnHostCommand: {exc}")
    if check.dead is None:
        return CheckOnHostAnswer(result=False, determined=False, details=check.details)
    if check.dead:
        details = f"Heart is not beating: {check.details}"
        return CheckOnHostAnswer(result=True, determined=True, alive=False, details=details)
    details = f"Heart is beating... {check.details}"
    return CheckOnHostAnswer(result=False, determined=True, alive=True, details=details)


@handler(FenceCommand)
async def fence(cmd: FenceCommand, ctx: HaContext) -> Message:
    target = f"{cmd.vm_name} on host {cmd.host_guid}"
    try:
        check = await ctx.heartbeat.check_host(
            _private_ip(cmd.host) or cmd.host_ip,
            stop_at_first_dead=cmd.report_check_failure_if_one_storage_is_down,
        )
    except HeartbeatError as exc:
        return FenceAnswer(result=False, details=f"Unable to fence {target}: {exc}")
    if check.dead is None:
        return FenceAnswer(
            result=False, details=f"No way to safely fence {target}: {check.details}"
        )
    if not check.dead:
        return FenceAnswer(result=False, details=f"Heart is still beating... {check.details}")
    return FenceAnswer(result=True, details=f"{target} fenced off: {check.details}")
