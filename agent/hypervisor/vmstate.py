"""What the management server hears about this host's VMs: power states, the ping's VM
report, CheckVirtualMachine's look and the VNC port, as CloudStack's KVM agent computes them.

The KVM agent (LibvirtComputingResource) maps libvirt's states with one table: running,
blocked and paused are PowerOn, shut off and shutting down PowerOff, anything else
PowerUnknown; a ping reports the PowerOn domains only, each with libvirt's host name
(``virConnectGetHostname``). The VNC port is the live XML's first ``<graphics port>``.

Functions taking ``conn`` run in a worker thread (``Hypervisor.call``) and raise libvirt's
error; the rest is ours.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import libvirt
from attrs import frozen

from agent.hypervisor.connection import Hypervisor, HypervisorError
from agent.hypervisor.domains import DomainState, state_of
from protocol.messages.host import HostVmStateReportEntry, PowerState

# LibvirtComputingResource's POWER_STATES_TABLE, in our vocabulary (blocked is RUNNING
# there); a state it does not list (crashed, pmsuspended) is PowerUnknown.
POWER_STATES: dict[DomainState, PowerState] = {
    DomainState.RUNNING: PowerState.POWER_ON,
    DomainState.PAUSED: PowerState.POWER_ON,
    DomainState.SHUT_OFF: PowerState.POWER_OFF,
    DomainState.SHUTTING_DOWN: PowerState.POWER_OFF,
    DomainState.NO_STATE: PowerState.POWER_UNKNOWN,
}
VNC_BASE_PORT = 5900


def power_state(state: DomainState) -> PowerState:
    return POWER_STATES.get(state, PowerState.POWER_UNKNOWN)


@frozen
class HostVms:
    """The host's live domains as one look saw them."""

    hostname: str  # libvirt's (virConnectGetHostname): the report's ``host``
    states: dict[str, DomainState]


@frozen
class VmLook:
    """One domain: its state and its VNC TCP port (None when it has none allocated)."""

    state: DomainState
    vnc_port: int | None


def host_vms(conn: Any) -> HostVms:
    """Every active domain and its state (inactive ones are shut off: never PowerOn). A
    domain that vanishes between the list and its state is left out: it no longer runs."""
    states: dict[str, DomainState] = {}
    for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
        try:
            states[dom.name()] = state_of(dom.state()[0])
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
    return HostVms(hostname=conn.getHostname(), states=states)


def look(conn: Any, name: str) -> VmLook:
    """``name``'s state and, when it is live, its VNC port (libvirt's error if unknown)."""
    dom = conn.lookupByName(name)
    state = state_of(dom.state()[0])
    port = graphics_port(dom.XMLDesc(0)) if power_state(state) is PowerState.POWER_ON else None
    return VmLook(state=state, vnc_port=port)


def vnc_port(conn: Any, name: str) -> int | None:
    """The TCP port of ``name``'s display, from its live XML (None: none allocated)."""
    return graphics_port(conn.lookupByName(name).XMLDesc(0))


def graphics_port(xml: str) -> int | None:
    """The first ``<devices><graphics port=...>`` as the KVM agent's XML parser reads it:
    -1 (not allocated), absent or not a number is None."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    graphics = root.find("./devices/graphics")
    if graphics is None:
        return None
    try:
        port = int(graphics.get("port", ""))
    except ValueError:
        return None
    return port if port > 0 else None


async def vm_state_report(
    hypervisor: Hypervisor, *, timeout: float
) -> dict[str, HostVmStateReportEntry] | None:
    """The ping's ``_hostVmStateReport``: the PowerOn domains; None while libvirt cannot be
    asked or does not answer within ``timeout`` s (the ping goes out on time). Never an
    empty map for want of an answer: the MS would take it as "every VM of this host
    stopped" and stop or restart them all; None makes it skip the sync."""
    try:
        vms = await hypervisor.peek(host_vms, timeout=timeout)
    except HypervisorError:
        return None
    return {
        name: HostVmStateReportEntry(state=PowerState.POWER_ON, host=vms.hostname)
        for name, state in vms.states.items()
        if power_state(state) is PowerState.POWER_ON
    }
