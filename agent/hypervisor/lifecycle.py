"""Start, stop and reboot a VM as CloudStack's KVM agent does (LibvirtStartCommandWrapper,
LibvirtStopCommandWrapper, LibvirtRebootCommandWrapper). Domains are transient: started with
createXML, gone once stopped; nothing is ever defined.

A failed start leaves what was there before: the domain it created is destroyed and the VLAN
bridges it made are deleted. Errors are :class:`VmError` whose text says what failed, where,
and what to check; libvirt's own errors stay inside (``HypervisorError`` is wrapped).
"""

from __future__ import annotations

import os
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import libvirt
import structlog
import trio
from attrs import frozen

from agent.hypervisor import domainxml, vifs, vmstate
from agent.hypervisor.connection import Hypervisor, HypervisorError
from agent.hypervisor.domains import LIVE, NOT_DEFINED, DomainState, state_of
from agent.hypervisor.pools import Pools
from agent.hypervisor.vifs import TrafficLabels, VifError
from protocol.messages.data_to import PrimaryDataStoreTO, TemplateObjectTO, VolumeObjectTO
from protocol.messages.enums import StoragePoolType, VolumeType
from protocol.messages.to import VirtualMachineTO

log = structlog.get_logger("agent.lifecycle")

STOP_POLL = 0.5  # seconds between looks while a guest powers off
CGROUP = Path("/sys/fs/cgroup")


class VmError(Exception):
    """A start, stop or reboot failed; the text is for the MS's operator."""


@frozen
class Started:
    name: str
    xml: str  # what was given to createXML
    bridges: tuple[str, ...]


@frozen
class Stopped:
    name: str
    how: str  # "shutdown", "destroyed after N s", "destroyed (forced)", "not running"
    bridges_deleted: tuple[str, ...]


# --- disks -------------------------------------------------------------------------------


async def disk_paths(vm: VirtualMachineTO, pools: Pools, mount_path: str) -> dict[int, str | None]:
    """diskSeq -> the disk's file on this host (None: the empty ISO slot). A volume's
    pool is looked up in libvirt (its target directory); a pool libvirt does not have is
    placed where the Java agent puts it (NFS: ``<mount.path>/<uuid>``, others: its path)."""
    found: dict[int, str | None] = {}
    for disk in vm.disks or []:
        seq = disk.disk_seq or 0
        data = disk.data
        if disk.type is VolumeType.ISO:
            if not isinstance(data, TemplateObjectTO) or not data.path:
                found[seq] = None
                continue
            store = data.image_data_store
            if not isinstance(store, PrimaryDataStoreTO):
                raise VmError(
                    f"ISO {data.path} of VM {vm.name} is on secondary storage, which this "
                    "agent does not mount for ISOs yet; detach the ISO and start again"
                )
            found[seq] = await _in_pool(pools, store, data.path, mount_path, vm, seq)
            continue
        if not isinstance(data, VolumeObjectTO):
            raise VmError(f"disk {seq} of VM {vm.name} carries no VolumeObjectTO")
        store = data.data_store
        name = data.path or data.uuid
        if not isinstance(store, PrimaryDataStoreTO) or not store.uuid or not name:
            raise VmError(f"disk {seq} of VM {vm.name} names no primary pool or volume path")
        found[seq] = await _in_pool(pools, store, name, mount_path, vm, seq)
    return found


async def _in_pool(
    pools: Pools, store: PrimaryDataStoreTO, name: str, mount_path: str, vm: Any, seq: int
) -> str:
    uuid = store.uuid or ""
    try:
        info = await pools.info(uuid, refresh=False)
    except HypervisorError:
        info = None
    if info is not None and info.target:
        directory = info.target
    elif store.pool_type is StoragePoolType.NETWORK_FILESYSTEM or not store.path:
        directory = os.path.join(mount_path, uuid)
    else:
        directory = store.path
    path = os.path.join(directory, os.path.basename(name))
    if not await trio.to_thread.run_sync(os.path.isfile, path):
        raise VmError(
            f"disk {seq} of VM {vm.name}: {path} does not exist on this host (pool {uuid}); "
            "check that the pool is attached here (ModifyStoragePoolCommand) and that the "
            "volume was created (CopyCommand/CreateObjectCommand)"
        )
    return path


# --- the host side of the XML ---------------------------------------------------------------


def emulator_of(caps_xml: str, arch: str) -> str | None:
    """The KVM emulator libvirt lists for ``arch`` (None: let libvirt choose)."""
    caps = ET.fromstring(caps_xml)
    for guest in caps.iterfind("guest"):
        node = guest.find("arch")
        if node is not None and node.get("name") == arch:
            return node.findtext("emulator")
    return None


def cgroup_v2_capacity(cpus: int, mhz: int, root: Path = CGROUP) -> int:
    """The Java agent's host max shares: cores x MHz on a cgroup v2 host, 0 on v1."""
    unified = (root / "cgroup.controllers").is_file()
    return cpus * mhz if unified else 0


async def _host_side(hypervisor: Hypervisor, arch: str, domain_type: str) -> domainxml.HostSide:
    caps = await hypervisor.call(lambda conn: conn.getCapabilities())
    facts = hypervisor.last_facts
    capacity = 0
    if facts is not None:
        capacity = await trio.to_thread.run_sync(cgroup_v2_capacity, facts.cpus, facts.speed_mhz)
    return domainxml.HostSide(
        emulator=emulator_of(caps, arch),
        cgroup_v2_capacity=capacity,
        domain_type=domain_type,
    )


# --- start ----------------------------------------------------------------------------------


def _create(conn: Any, name: str, xml: str) -> None:
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
            raise
    else:
        if dom.isActive():
            raise VmError(f"VM {name} is already running on this host; stop it first")
        if dom.isPersistent():
            dom.undefine()  # startVM: a leftover definition goes; ours are transient
    conn.createXML(xml, 0)


async def start(
    hypervisor: Hypervisor,
    pools: Pools,
    vm: VirtualMachineTO,
    *,
    host_ip: str | None,
    labels: TrafficLabels,
    mount_path: str = "/mnt",
    domain_type: str = "kvm",
) -> Started:
    name = vm.name or ""
    if not name:
        raise VmError("the StartCommand's VirtualMachineTO has no name")
    try:
        state = await _state(hypervisor, name)
        if state in LIVE:
            raise VmError(f"VM {name} is already running on this host ({state}); stop it first")
        paths = await disk_paths(vm, pools, mount_path)
        host = await _host_side(hypervisor, vm.arch or "x86_64", domain_type)
    except HypervisorError as exc:
        raise VmError(f"libvirt could not prepare VM {name}: {exc}") from None
    try:
        plugged = await vifs.plug_nics(vm.nics or [], labels)
    except VifError as exc:
        raise VmError(f"cannot start VM {name}: {exc}") from None
    bridges = {p.device_id: p.bridge for p in plugged}
    try:
        xml = _xml(vm, host_ip, bridges, paths, host)
        await hypervisor.call(lambda conn: _create(conn, name, xml))
    except BaseException as exc:
        # A VmError from _create is its refusal to touch a running namesake: leave it be.
        with trio.CancelScope(shield=True):
            await _undo_start(hypervisor, name, plugged, destroy=not isinstance(exc, VmError))
        if isinstance(exc, HypervisorError):
            raise VmError(f"libvirt could not start VM {name}: {exc}") from None
        raise
    log.info("vm started", vm=name, bridges=list(bridges.values()))
    return Started(name, xml, tuple(bridges.values()))


def _xml(
    vm: VirtualMachineTO,
    host_ip: str | None,
    bridges: Mapping[int, str],
    paths: Mapping[int, str | None],
    host: domainxml.HostSide,
) -> str:
    try:
        dom = domainxml.build(vm, host_ip=host_ip, bridges=bridges, disk_paths=paths, host=host)
    except domainxml.DomainSpecError as exc:
        raise VmError(f"cannot build the domain of VM {vm.name}: {exc}") from None
    return domainxml.to_xml(dom)


async def _undo_start(
    hypervisor: Hypervisor, name: str, plugged: list[vifs.PluggedNic], *, destroy: bool
) -> None:
    try:
        if destroy:
            await hypervisor.call(lambda conn: _destroy_if_running(conn, name))
    except HypervisorError as exc:
        log.warning("a failed start left its domain", vm=name, error=str(exc))
    await vifs.unplug_nics([p.bridge for p in plugged if p.created])


def _destroy_if_running(conn: Any, name: str) -> None:
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        return
    if dom.isActive():
        dom.destroy()


# --- stop, reboot ---------------------------------------------------------------------------


def _look(conn: Any, name: str) -> tuple[str, str | None]:
    """(state or NOT_DEFINED, the live XML when defined)."""
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return NOT_DEFINED, None
        raise
    return state_of(dom.state()[0]), dom.XMLDesc(0)


async def _state(hypervisor: Hypervisor, name: str) -> str:
    return (await hypervisor.call(lambda conn: _look(conn, name)))[0]


def _act(conn: Any, name: str, action: str) -> None:
    """shutdown / destroy / undefine; a domain already gone is no error."""
    try:
        dom = conn.lookupByName(name)
        if action == "shutdown":
            dom.shutdown()
        elif action == "destroy":
            if dom.isActive():
                dom.destroy()
            if dom.isPersistent():
                dom.undefine()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
            raise


async def stop(
    hypervisor: Hypervisor,
    name: str,
    *,
    force: bool,
    timeout: float,
    check_before_cleanup: bool = False,
    persistence: Mapping[str, bool] | None = None,
) -> Stopped:
    """stopVM: ACPI shutdown, waited for ``timeout`` s, then destroy (``force``: at once);
    then the NICs' VLAN bridges no VM uses any more go."""
    try:
        state, xml = await hypervisor.call(lambda conn: _look(conn, name))
        if check_before_cleanup and state == DomainState.RUNNING:
            raise VmError(f"vm is still running on host (VM {name}, checkBeforeCleanup)")
        bridges = vifs.interface_bridges(xml) if xml else []
        if state == NOT_DEFINED:
            how = "not running"
        elif force or state not in (DomainState.RUNNING, DomainState.SHUTTING_DOWN):
            await hypervisor.call(lambda conn: _act(conn, name, "destroy"))
            how = "destroyed (forced)" if force else f"destroyed ({state})"
        else:
            how = await _shutdown(hypervisor, name, timeout)
    except HypervisorError as exc:
        raise VmError(f"libvirt could not stop VM {name}: {exc}") from None
    deleted = await vifs.unplug_nics(bridges, persistence)
    log.info("vm stopped", vm=name, how=how, bridges_deleted=deleted)
    return Stopped(name, how, tuple(deleted))


async def _shutdown(hypervisor: Hypervisor, name: str, timeout: float) -> str:
    began = time.monotonic()
    try:
        await hypervisor.call(lambda conn: _act(conn, name, "shutdown"))
    except HypervisorError as exc:
        log.info("ACPI shutdown refused; destroying", vm=name, error=str(exc))
    else:
        with trio.move_on_after(timeout):
            while (state := await _state(hypervisor, name)) in LIVE or (
                state == DomainState.SHUTTING_DOWN
            ):
                await trio.sleep(STOP_POLL)
            await hypervisor.call(lambda conn: _act(conn, name, "destroy"))  # a persistent one
            return "shut down"
    await hypervisor.call(lambda conn: _act(conn, name, "destroy"))
    return f"destroyed after {time.monotonic() - began:.0f} s without powering off"


def _reboot(conn: Any, name: str) -> int | None:
    conn.lookupByName(name).reboot(libvirt.VIR_DOMAIN_REBOOT_ACPI_POWER_BTN)
    port = vmstate.vnc_port(conn, name)
    return port - vmstate.VNC_BASE_PORT if port is not None else None


async def reboot(hypervisor: Hypervisor, name: str) -> int | None:
    """rebootVM: the ACPI power button (on_reboot=restart keeps the QEMU process); the VNC
    display number after it."""
    try:
        return await hypervisor.call(lambda conn: _reboot(conn, name))
    except HypervisorError as exc:
        raise VmError(f"libvirt could not reboot VM {name}: {exc}") from None
