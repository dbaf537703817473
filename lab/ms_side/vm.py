"""The VM readers of a 4.21 management server: start, stop, reboot, check, VNC port.

Sources (CloudStack 4.21.0.0): ``engine/orchestration/src/main/java/com/cloud/vm/
VirtualMachineManagerImpl.java`` (``orchestrateStart``, ``syncDiskChainChange``,
``advanceStop``, ``sendStop``, ``orchestrateReboot``, ``checkVmOnHost``);
``server/src/main/java/com/cloud/vm/UserVmManagerImpl.java`` (``finalizeStart``,
``updateVncPasswordIfItHasChanged``); ``framework/ipc/src/main/java/com/cloud/agent/manager/
Commands.java`` (``getAnswer``: exact class); ``server/src/main/java/com/cloud/server/
ManagementServerImpl.java`` (``getVncPort``).
"""

from __future__ import annotations

from typing import Any

from lab.ms_side.verdict import MsVerdict, class_cast, details_of, java_name, result_of
from protocol.codec import to_json
from protocol.messages.data_to import VolumeObjectTO
from protocol.messages.enums import TrafficType, VolumeType
from protocol.messages.host import PowerState
from protocol.messages.vm import (
    CheckVirtualMachineAnswer,
    GetVncPortAnswer,
    RebootAnswer,
    StartAnswer,
    StartCommand,
    StopAnswer,
)
from protocol.model import Message


def _exact(answer: Message, cls: type[Any]) -> str | None:
    """Commands.getAnswer(cls): the reason it throws, or None when the class is exact."""
    if type(answer) is cls:
        return None
    got = java_name(answer)
    return f"CloudRuntimeException 'Unable to get answer that is of {cls.JAVA_CLASS}' ({got})"


def start(command: StartCommand, answer: Message | None) -> MsVerdict:
    """orchestrateStart + finalizeStart for a User VM's StartCommand and its answer."""
    if answer is None:
        return MsVerdict(False, "time-out: CheckStop scheduled, the start fails")
    if (reason := _exact(answer, StartAnswer)) is not None:
        return MsVerdict(False, f"{reason}: cleanup (StopCommand), no retry on another host")
    assert isinstance(answer, StartAnswer)
    if not answer.result:
        retry = "stopRetry" not in answer.context_map
        then = "another host is tried" if retry else "contextMap stopRetry: no other host"
        return MsVerdict(False, f"'Unable to start VM on host due to {answer.details}': {then}")
    vm = answer.vm
    if vm is None or vm.nics is None or vm.disks is None:
        return MsVerdict(False, "NullPointerException: the StartAnswer's vm, nics or disks")
    for disk in vm.disks:
        if disk.type != VolumeType.ISO and not isinstance(disk.data, VolumeObjectTO):
            cast = f"{disk.data.java_class if disk.data else 'null'} -> VolumeObjectTO"
            return MsVerdict(False, f"syncDiskChainChange: ClassCastException/NPE ({cast})")
    guest_ips = [n.ip for n in vm.nics if n.type == TrafficType.GUEST]
    read = {
        "vncPassword": vm.vnc_password,
        "guestIp": guest_ips[-1] if guest_ips else None,
        "hostGuid": answer.host_guid,
        "gpuDevice": vm.gpu_device,
        "volumePaths": {
            d.data.id: d.data.path for d in vm.disks if isinstance(d.data, VolumeObjectTO)
        },
    }
    # The MS stores what comes back: a different password or volume path changes its DB.
    sent = command.vm
    changed = []
    if sent is not None:
        if vm.vnc_password is not None and vm.vnc_password != sent.vnc_password:
            changed.append("vncPassword (the MS stores the returned one)")
        if to_json(vm.disks) != to_json(sent.disks or []):
            changed.append("disks (the MS updates volume paths and chains from them)")
        if [n.ip for n in vm.nics] != [n.ip for n in sent.nics or []]:
            changed.append("NIC ips (the Guest NIC's ip replaces the DB's)")
    if changed:
        return MsVerdict(
            False, "the echoed VirtualMachineTO differs: " + ", ".join(changed), read=read
        )
    return MsVerdict(True, "Start completed for VM", read=read)


def stop(answer: Message | None, *, via_send_stop: bool = False) -> MsVerdict:
    """advanceStop reads ``result`` of any answer (``platform`` of a StopAnswer); sendStop
    (HA, after a failed start or migration) also requires a StopAnswer."""
    if answer is None:
        return MsVerdict(False, "no answer: 'Unable to stop', the VM keeps its state")
    if via_send_stop and not isinstance(answer, StopAnswer):
        return MsVerdict(False, "sendStop: 'Invalid answer received in response to a StopCommand'")
    read = {"platform": answer.platform} if isinstance(answer, StopAnswer) else {}
    if not result_of(answer):
        return MsVerdict(
            False,
            f"'Unable to stop the virtual machine due to {details_of(answer)}'; unless forced, "
            "the VM stays in its state (OperationFailed)",
            read=read,
        )
    return MsVerdict(True, "stopped: finalizeStop, resources released", read=read)


def reboot(answer: Message | None) -> MsVerdict:
    """orchestrateReboot: ``cmds.getAnswer(RebootAnswer.class)`` (exact: a StopAnswer fails)."""
    if answer is None:
        return MsVerdict(False, "time-out: 'Failed to reboot the vm on host'")
    if (reason := _exact(answer, RebootAnswer)) is not None:
        return MsVerdict(False, reason)
    if not result_of(answer):
        return MsVerdict(False, f"'Unable to reboot VM ... due to {details_of(answer)}'")
    return MsVerdict(True, "rebooted")


def check_vm_on_host(answer: Message | None) -> MsVerdict:
    """checkVmOnHost, sent to the destination after a migration: false means a StopCommand
    to the source and the VM marked Stopped ('Unable to complete migration')."""
    if answer is None or not result_of(answer):
        return MsVerdict(False, "no answer or result false: the migrated VM is stopped")
    state = answer.state if isinstance(answer, CheckVirtualMachineAnswer) else None
    read = {"state": state.value if state else None}
    if state == PowerState.POWER_OFF:
        return MsVerdict(False, "PowerOff: the migrated VM is stopped", read=read)
    return MsVerdict(True, "the VM runs on the destination", read=read)


def vnc_port(answer: Message | None) -> MsVerdict:
    """ManagementServerImpl.getVncPort: ``(GetVncPortAnswer) easySend(...)``; the console
    proxy connects to (address, port), or gets (null, -1)."""
    if answer is not None and not isinstance(answer, GetVncPortAnswer):
        return MsVerdict(False, f"{class_cast(answer, GetVncPortAnswer)}: no console")
    if answer is None or not answer.result:
        return MsVerdict(False, "no console: (null, -1)", read={"address": None, "port": -1})
    return MsVerdict(
        True, "console at address:port", read={"address": answer.address, "port": answer.port}
    )
