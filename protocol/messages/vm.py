"""VM life cycle: start, stop, reboot, check, VNC port (CloudStack 4.21).

Java classes in ``core/src/main/java/com/cloud/agent/api/``. Answers the MS expects:

* StartCommand -> **StartAnswer**, found by exact class (``Commands.getAnswer``), echoing
  the VirtualMachineTO (the MS reads its disks, Guest NIC ip and vncPassword back);
* RebootCommand -> **RebootAnswer**, exact class as well;
* StopCommand -> StopAnswer (the MS reads ``result`` of any answer, ``platform`` of a StopAnswer);
* CheckVirtualMachineCommand -> CheckVirtualMachineAnswer (``PowerOff`` fails a migration);
* GetVncPortCommand -> **GetVncPortAnswer** (cast).
"""

from __future__ import annotations

from typing import Any, ClassVar

from attrs import frozen

from protocol.messages.host import PowerState
from protocol.messages.to import DpdkTO, VirtualMachineTO
from protocol.model import Answer, Command, jfield

_API = "com.cloud.agent.api."


@frozen
class StartCommand(Command):
    JAVA_CLASS: ClassVar[str] = _API + "StartCommand"

    vm: VirtualMachineTO | None = jfield("vm", default=None)
    host_ip: str | None = jfield("hostIp", default=None)  # this host's private IP: VNC listen
    execute_in_sequence: bool = jfield("executeInSequence", default=False)
    secondary_storage: str | None = jfield("secondaryStorage", default=None)

    def executes_in_sequence(self) -> bool:
        # Java: a virtual router's start never waits in the sequence queue.
        if self.vm is not None and (self.vm.name or "").startswith("r-"):
            return False
        return self.execute_in_sequence


@frozen
class StartAnswer(Answer):
    JAVA_CLASS: ClassVar[str] = _API + "StartAnswer"

    vm: VirtualMachineTO | None = jfield("vm", default=None)  # the command's, echoed
    host_guid: str | None = jfield("hostGuid", default=None)
    iqn_to_data: dict[str, dict[str, str]] | None = jfield("_iqnToData", default=None)


@frozen
class RebootCommand(Command):
    JAVA_CLASS: ClassVar[str] = _API + "RebootCommand"

    vm_name: str | None = jfield("vmName", default=None)
    vm: VirtualMachineTO | None = jfield("vm", default=None)
    execute_in_sequence: bool = jfield("executeInSequence", default=False)

    def executes_in_sequence(self) -> bool:
        return self.execute_in_sequence


@frozen
class RebootAnswer(Answer):
    JAVA_CLASS: ClassVar[str] = _API + "RebootAnswer"

    vnc_port: int | None = jfield("vncPort", default=None)


@frozen
class StopCommand(RebootCommand):
    JAVA_CLASS: ClassVar[str] = _API + "StopCommand"

    is_proxy: bool = jfield("isProxy", default=False)
    url_port: str | None = jfield("urlPort", default=None)
    public_console_proxy_ip_address: str | None = jfield(
        "publicConsoleProxyIpAddress", default=None
    )
    gpu_device: dict[str, Any] | None = jfield("gpuDevice", default=None)  # GPUDeviceTO, raw
    check_before_cleanup: bool = jfield("checkBeforeCleanup", default=False)
    control_ip: str | None = jfield("controlIp", default=None)
    force_stop: bool = jfield("forceStop", default=False)
    dpdk_interface_mapping: dict[str, DpdkTO] | None = jfield("dpdkInterfaceMapping", default=None)
    # vlan id -> true: delete the VLAN bridge once no VM uses it (absent: delete).
    vlan_to_persistence_map: dict[str, bool] | None = jfield("vlanToPersistenceMap", default=None)
    expunge_vm: bool = jfield("expungeVM", default=False)
    volumes_to_disconnect: list[dict[str, str]] | None = jfield("volumesToDisconnect", factory=list)

    def executes_in_sequence(self) -> bool:
        if (self.vm_name or "").startswith("r-"):
            return False
        return self.execute_in_sequence


@frozen
class StopAnswer(RebootAnswer):
    JAVA_CLASS: ClassVar[str] = _API + "StopAnswer"

    platform: str | None = jfield("platform", default=None)


@frozen
class CheckVirtualMachineCommand(Command):
    JAVA_CLASS: ClassVar[str] = _API + "CheckVirtualMachineCommand"
    MS_WAIT: ClassVar[int] = 20  # set by the Java constructor the MS uses

    vm_name: str | None = jfield("vmName", default=None)


@frozen
class CheckVirtualMachineAnswer(Answer):
    JAVA_CLASS: ClassVar[str] = _API + "CheckVirtualMachineAnswer"

    vnc_port: int | None = jfield("vncPort", default=None)  # display number (port - 5900)
    state: PowerState | None = jfield("state", default=None)


@frozen
class GetVncPortCommand(Command):
    JAVA_CLASS: ClassVar[str] = _API + "GetVncPortCommand"

    id: int = jfield("id", default=0)  # the VM's database id
    name: str | None = jfield("name", default=None)  # instance name


@frozen
class GetVncPortAnswer(Answer):
    JAVA_CLASS: ClassVar[str] = _API + "GetVncPortAnswer"

    address: str | None = jfield("address", default=None)
    port: int = jfield("port", default=0)  # the TCP port
