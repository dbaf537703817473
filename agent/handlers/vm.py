"""Looks at one VM the MS asks about: CheckVirtualMachineCommand, GetVncPortCommand.

CheckVirtualMachineCommand goes to the destination after every migration: an answer that is
false or says PowerOff makes the MS stop the VM on the source and mark it Stopped although it
runs. The state is computed as CloudStack's KVM agent does (agent.hypervisor.vmstate), with
its one twist: a paused domain is PowerUnknown here, not PowerOn. ``vncPort`` is the display
number (port - 5900), for a live VM only. GetVncPortCommand -> the agent's private IP and the
live VNC TCP port, where the console proxy connects.
"""

from __future__ import annotations

from typing import Protocol

import trio

from agent.config import AgentConfig
from agent.handlers import handler
from agent.hypervisor import hostinfo, vmstate
from agent.hypervisor.connection import Hypervisor, HypervisorError
from agent.hypervisor.domains import DomainState
from protocol.messages.host import PowerState
from protocol.messages.vm import (
    CheckVirtualMachineAnswer,
    CheckVirtualMachineCommand,
    GetVncPortAnswer,
    GetVncPortCommand,
)
from protocol.model import Message


class VmContext(Protocol):
    @property
    def config(self) -> AgentConfig: ...

    @property
    def hypervisor(self) -> Hypervisor: ...


@handler(CheckVirtualMachineCommand)
async def check_virtual_machine(cmd: CheckVirtualMachineCommand, ctx: VmContext) -> Message:
    name = cmd.vm_name
    if not name:
        return CheckVirtualMachineAnswer(result=False, details="the command names no VM (vmName)")
    try:
        vm = await ctx.hypervisor.call(lambda conn: vmstate.look(conn, name))
    except HypervisorError as exc:
        # The Java agent answers false on any libvirt error, an unknown domain included.
        return CheckVirtualMachineAnswer(result=False, details=f"cannot look at VM {name}: {exc}")
    state = vmstate.power_state(vm.state)
    display = vm.vnc_port - vmstate.VNC_BASE_PORT if vm.vnc_port is not None else None
    if state is PowerState.POWER_ON and vm.state is DomainState.PAUSED:
        state = PowerState.POWER_UNKNOWN
    return CheckVirtualMachineAnswer(result=True, state=state, vnc_port=display)


@handler(GetVncPortCommand)
async def get_vnc_port(cmd: GetVncPortCommand, ctx: VmContext) -> Message:
    name = cmd.name
    if not name:
        return GetVncPortAnswer(result=False, details="the command names no VM (name)")
    try:
        port = await ctx.hypervisor.call(lambda conn: vmstate.vnc_port(conn, name))
    except HypervisorError as exc:
        return GetVncPortAnswer(result=False, details=f"cannot look at VM {name}: {exc}")
    if port is None:
        return GetVncPortAnswer(
            result=False, details=f"VM {name} has no VNC port: it is not running or has no display"
        )
    address = await private_ip(ctx)
    if address is None:
        return GetVncPortAnswer(
            result=False,
            details="this host has no private IP address to give the console proxy "
            f"(private.network.device={ctx.config.private_network_device or 'default route'})",
        )
    return GetVncPortAnswer(result=True, address=address, port=port)


async def private_ip(ctx: VmContext) -> str | None:
    """The privateIpAddress the agent registered with (the Java agent's answer)."""
    facts = ctx.hypervisor.last_facts
    if facts is not None and facts.private is not None:
        return facts.private.ip
    device = ctx.config.private_network_device
    found = await trio.to_thread.run_sync(hostinfo.private_interface, device)
    return found.ip if found is not None else None
