"""A VM's life: StartCommand, StopCommand, RebootCommand (agent.hypervisor.lifecycle).

Each answers with the exact class the MS looks for, failures included: StartAnswer echoing
the command's VirtualMachineTO untouched (the MS stores the vncPassword and volume paths it
reads back), StopAnswer, RebootAnswer (with the VNC display number).

Unlike the Java agent, a stop that leaves the VM running answers result=false (Java answers
true with the error in ``details``, and the MS then thinks the VM stopped).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import structlog

from agent.config import AgentConfig
from agent.handlers import handler
from agent.hypervisor.connection import Hypervisor
from protocol.messages.vm import (
    RebootAnswer,
    RebootCommand,
    StartAnswer,
    StartCommand,
    StopAnswer,
    StopCommand,
)
from protocol.model import Message

if TYPE_CHECKING:
    from agent.hypervisor.pools import Pools

log = structlog.get_logger("agent.vmlife")


class VmLifeContext(Protocol):
    @property
    def config(self) -> AgentConfig: ...

    @property
    def hypervisor(self) -> Hypervisor: ...

    @property
    def pools(self) -> Pools: ...


@handler(StartCommand)
async def start_vm(cmd: StartCommand, ctx: VmLifeContext) -> Message:
    # Imported when a VM is first started, stopped or rebooted: an idle agent never loads
    # the domain XML builder and its kin.
    from agent.hypervisor import lifecycle
    from agent.hypervisor.lifecycle import VmError
    from agent.hypervisor.vifs import TrafficLabels

    vm = cmd.vm
    if vm is None or not vm.name:
        return StartAnswer(result=False, details="the StartCommand carries no VM (vm.name)", vm=vm)
    try:
        await lifecycle.start(
            ctx.hypervisor,
            ctx.pools,
            vm,
            host_ip=cmd.host_ip,
            labels=TrafficLabels.from_config(ctx.config),
            mount_path=ctx.config.mount_path,
            domain_type=ctx.config.vm_domain_type,
        )
    except VmError as exc:
        log.warning("vm start failed", vm=vm.name, error=str(exc))
        return StartAnswer(result=False, details=str(exc), vm=vm)
    except Exception as exc:  # a bug: still the class the MS looks for (else it throws)
        log.exception("vm start failed", vm=vm.name)
        return StartAnswer(result=False, details=_bug(f"start VM {vm.name}", exc), vm=vm)
    return StartAnswer(result=True, vm=vm)


@handler(StopCommand)
async def stop_vm(cmd: StopCommand, ctx: VmLifeContext) -> Message:
    from agent.hypervisor import lifecycle
    from agent.hypervisor.lifecycle import VmError

    name = cmd.vm_name
    if not name:
        return StopAnswer(result=False, details="the StopCommand names no VM (vmName)")
    try:
        stopped = await lifecycle.stop(
            ctx.hypervisor,
            name,
            force=cmd.force_stop,
            timeout=ctx.config.stop_timeout,
            check_before_cleanup=cmd.check_before_cleanup,
            persistence=cmd.vlan_to_persistence_map,
        )
    except VmError as exc:
        log.warning("vm stop failed", vm=name, error=str(exc))
        return StopAnswer(result=False, details=str(exc))
    except Exception as exc:
        log.exception("vm stop failed", vm=name)
        return StopAnswer(result=False, details=_bug(f"stop VM {name}", exc))
    return StopAnswer(result=True, details=f"VM {name}: {stopped.how}")


@handler(RebootCommand)
async def reboot_vm(cmd: RebootCommand, ctx: VmLifeContext) -> Message:
    from agent.hypervisor import lifecycle
    from agent.hypervisor.lifecycle import VmError

    name = cmd.vm_name or (cmd.vm.name if cmd.vm else None)
    if not name:
        return RebootAnswer(result=False, details="the RebootCommand names no VM (vmName)")
    try:
        display = await lifecycle.reboot(ctx.hypervisor, name)
    except VmError as exc:
        return RebootAnswer(result=False, details=str(exc))
    except Exception as exc:
        log.exception("vm reboot failed", vm=name)
        return RebootAnswer(result=False, details=_bug(f"reboot VM {name}", exc))
    return RebootAnswer(result=True, vnc_port=display)


def _bug(what: str, exc: Exception) -> str:
    return f"the agent failed to {what}: {type(exc).__name__}: {exc} (see the agent's log)"
