"""Domains: one state vocabulary for every caller, and the looks at domains the agent takes.

The functions here run in a worker thread on an open connection (``Hypervisor.call``); they
raise libvirt's error, which ``call`` turns into HypervisorError.
"""

from __future__ import annotations

import enum
from typing import Any

import libvirt


class DomainState(enum.StrEnum):
    """A domain's state as the agent names it (in logs and in answers to the MS)."""

    RUNNING = "running"  # blocked on a resource counts as running, as libvirt's virsh says
    PAUSED = "paused"
    SHUTTING_DOWN = "shutting down"
    SHUT_OFF = "shut off"
    CRASHED = "crashed"
    SUSPENDED = "suspended"  # by guest power management
    NO_STATE = "no state"
    UNRECOGNISED = "unrecognised"  # a state newer than this code


_STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: DomainState.NO_STATE,
    libvirt.VIR_DOMAIN_RUNNING: DomainState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: DomainState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: DomainState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: DomainState.SHUTTING_DOWN,
    libvirt.VIR_DOMAIN_SHUTOFF: DomainState.SHUT_OFF,
    libvirt.VIR_DOMAIN_CRASHED: DomainState.CRASHED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: DomainState.SUSPENDED,
}
LIVE = (DomainState.RUNNING, DomainState.PAUSED)  # the VM's memory is on this host
NOT_DEFINED = "not defined"  # what a look says of a domain libvirt does not know


def state_of(code: int) -> DomainState:
    """libvirt's VIR_DOMAIN_* state as a DomainState."""
    return _STATES.get(code, DomainState.UNRECOGNISED)


def active_domains(conn: Any) -> dict[str, DomainState]:
    """Running (or paused) domains: name -> state."""
    return {
        dom.name(): state_of(dom.state()[0])
        for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
    }


def state_or_not_defined(conn: Any, vm: str) -> str:
    """``vm``'s state, or NOT_DEFINED when libvirt has no such domain."""
    try:
        dom = conn.lookupByName(vm)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return NOT_DEFINED
        raise
    return state_of(dom.state()[0])


def incoming_migrations(conn: Any) -> int:
    """Domains paused because an incoming migration is filling them."""
    count = 0
    for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_PAUSED):
        state, reason = dom.state()
        if state == libvirt.VIR_DOMAIN_PAUSED and reason == libvirt.VIR_DOMAIN_PAUSED_MIGRATION:
            count += 1
    return count


def undefine_if_stopped(conn: Any, vm: str) -> None:
    """Remove ``vm``'s definition once it no longer runs here (a migrated VM's source copy)."""
    try:
        dom = conn.lookupByName(vm)
    except libvirt.libvirtError:
        return  # already gone
    if not dom.isActive() and dom.isPersistent():
        dom.undefine()
