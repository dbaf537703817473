"""The host and its connection: startup, ready, ping, shutdown, health, maintenance, MS lists."""

from __future__ import annotations

import enum
from typing import Any, ClassVar

import attrs
from attrs import frozen

from protocol.model import Answer, Command, jfield

_API = "com.cloud.agent.api."
_LB = "org.apache.cloudstack.agent.lb."


class HostType(enum.Enum):
    ROUTING = "Routing"
    STORAGE = "Storage"  # StartupStorageCommand (local pools)


class PowerState(enum.Enum):
    POWER_ON = "PowerOn"
    POWER_OFF = "PowerOff"
    POWER_UNKNOWN = "PowerUnknown"
    POWER_REPORT_MISSING = "PowerReportMissing"


@frozen
class HostVmStateReportEntry:
    state: PowerState = jfield("state", default=PowerState.POWER_ON)
    host: str | None = jfield("host", default=None)


def _host_type(self: StartupCommand) -> HostType:
    return self.HOST_TYPE


@frozen
class StartupCommand(Command):
    JAVA_CLASS: ClassVar[str] = _API + "StartupCommand"
    HOST_TYPE: ClassVar[HostType] = HostType.ROUTING  # the default ``type`` of each subclass

    type: HostType = jfield("type", default=attrs.Factory(_host_type, takes_self=True))
    data_center: str | None = jfield("dataCenter", default=None)
    pod: str | None = jfield("pod", default=None)
    cluster: str | None = jfield("cluster", default=None)
    guid: str | None = jfield("guid", default=None)
    name: str | None = jfield("name", default=None)
    id: int | None = jfield("id", default=None)
    version: str | None = jfield("version", default=None)
    iqn: str | None = jfield("iqn", default=None)
    public_ip_address: str | None = jfield("publicIpAddress", default=None)
    public_netmask: str | None = jfield("publicNetmask", default=None)
    public_mac_address: str | None = jfield("publicMacAddress", default=None)
    private_ip_address: str | None = jfield("privateIpAddress", default=None)
    private_mac_address: str | None = jfield("privateMacAddress", default=None)
    private_netmask: str | None = jfield("privateNetmask", default=None)
    storage_ip_address: str | None = jfield("storageIpAddress", default=None)
    storage_netmask: str | None = jfield("storageNetmask", default=None)
    storage_mac_address: str | None = jfield("storageMacAddress", default=None)
    storage_ip_address_deux: str | None = jfield("storageIpAddressDeux", default=None)
    storage_mac_address_deux: str | None = jfield("storageMacAddressDeux", default=None)
    storage_netmask_deux: str | None = jfield("storageNetmaskDeux", default=None)
    agent_tag: str | None = jfield("agentTag", default=None)
    resource_name: str | None = jfield("resourceName", default=None)
    gateway_ip_address: str | None = jfield("gatewayIpAddress", default=None)
    ms_host_list: str | None = jfield("msHostList", default=None)
    connection_transferred: bool = jfield("connectionTransferred", default=False)
    arch: str | None = jfield("arch", default=None)


@frozen
class StartupRoutingCommand(StartupCommand):
    """The fields of the Java class (core/.../agent/api/StartupRoutingCommand.java), and
    nothing else: tests/test_startup_golden.py holds the list."""

    JAVA_CLASS: ClassVar[str] = _API + "StartupRoutingCommand"

    cpu_sockets: int | None = jfield("cpuSockets", default=None)
    cpus: int = jfield("cpus", default=0)
    speed: int = jfield("speed", default=0)  # MHz
    memory: int = jfield("memory", default=0)  # bytes offered to guests
    dom0_min_memory: int = jfield("dom0MinMemory", default=0)  # bytes kept for the host
    pool_sync: bool = jfield("poolSync", default=False)
    supports_cloned_volumes: bool = jfield("supportsClonedVolumes", default=False)
    caps: str | None = jfield("caps", default=None)
    pool: str | None = jfield("pool", default=None)
    hypervisor_type: str = jfield("hypervisorType", default="KVM")
    host_details: dict[str, str] = jfield("hostDetails", factory=dict)
    host_tags: list[str] = jfield("hostTags", factory=list)
    hypervisor_version: str | None = jfield("hypervisorVersion", default=None)
    # GPU groups; the Java class starts with an empty map, so it is always on the wire.
    group_details: dict[str, Any] = jfield("groupDetails", factory=dict)
    host_health_check_result: bool | None = jfield("hostHealthCheckResult", default=None)


@frozen
class StartupAnswer(Answer):
    JAVA_CLASS: ClassVar[str] = _API + "StartupAnswer"

    host_id: int = jfield("hostId", default=0)
    host_name: str | None = jfield("hostName", default=None)
    host_uuid: str | None = jfield("hostUuid", default=None)
    ping_interval: int = jfield("pingInterval", default=60)
    agent_host_status_check_delay_sec: int | None = jfield(
        "agentHostStatusCheckDelaySec", default=None
    )
    params: dict[str, str] = jfield("params", factory=dict)
    retry_current_ms: bool | None = jfield("retryCurrentMs", default=None)


@frozen
class ReadyCommand(Command):
    JAVA_CLASS: ClassVar[str] = _API + "ReadyCommand"
    IN_SEQUENCE: ClassVar[bool] = True

    details: str | None = jfield("_details", default=None)  # non-null: the MS refuses the host
    dc_id: int | None = jfield("dcId", default=None)
    host_id: int | None = jfield("hostId", default=None)
    host_uuid: str | None = jfield("hostUuid", default=None)
    host_name: str | None = jfield("hostName", default=None)
    ms_host_list: list[str] | None = jfield("msHostList", default=None)
    avoid_ms_host_list: list[str] | None = jfield("avoidMsHostList", default=None)
    lb_algorithm: str | None = jfield("lbAlgorithm", default=None)
    lb_check_interval: int | None = jfield("lbCheckInterval", default=None)
    enable_human_readable_sizes: bool | None = jfield("enableHumanReadableSizes", default=None)
    arch: str | None = jfield("arch", default=None)


@frozen
class ReadyAnswer(Answer):
    JAVA_CLASS: ClassVar[str] = _API + "ReadyAnswer"

    details_map: dict[str, str] | None = jfield("detailsMap", default=None)


@frozen
class PingCommand(Command):
    JAVA_CLASS: ClassVar[str] = _API + "PingCommand"

    host_type: HostType = jfield("hostType", default=HostType.ROUTING)
    host_id: int = jfield("hostId", default=0)
    out_of_band: bool = jfield("outOfBand", default=False)
    command_infos: list[dict[str, Any]] | None = jfield("commandInfos", default=None)


@frozen
class PingRoutingCommand(PingCommand):
    JAVA_CLASS: ClassVar[str] = _API + "PingRoutingCommand"

    # None (omitted) = no report: the MS skips its VM state sync for this ping. An empty map
    # would say "no VM runs here" and the MS would stop every VM it believes on this host.
    host_vm_state_report: dict[str, HostVmStateReportEntry] | None = jfield(
        "_hostVmStateReport", default=None
    )
    gateway_accessible: bool = jfield("_gatewayAccessible", default=True)
    vnet_accessible: bool = jfield("_vnetAccessible", default=True)
    host_health_check_result: bool | None = jfield("hostHealthCheckResult", default=None)


@frozen
class PingAnswer(Answer):
    JAVA_CLASS: ClassVar[str] = _API + "PingAnswer"

    command: dict[str, Any] | None = jfield("_command", default=None)  # the ping, echoed
    send_startup: bool = jfield("sendStartup", default=False)
    avoid_ms_list: list[str] | None = jfield("avoidMsList", default=None)
    reconcile_commands: list[str] | None = jfield("reconcileCommands", default=None)


@frozen
class ShutdownCommand(Command):
    JAVA_CLASS: ClassVar[str] = _API + "ShutdownCommand"
    IN_SEQUENCE: ClassVar[bool] = True

    # Reasons the Java side uses.
    REQUESTED: ClassVar[str] = "sig.kill"
    UPDATE: ClassVar[str] = "update"
    UNKNOWN: ClassVar[str] = "unknown"
    DELETE_HOST: ClassVar[str] = "deleteHost"

    reason: str | None = jfield("reason", default=None)
    detail: str | None = jfield("detail", default=None)
    remove_host: bool = jfield("removeHost", default=False)


@frozen
class CheckHealthCommand(Command):
    JAVA_CLASS: ClassVar[str] = _API + "CheckHealthCommand"


@frozen
class CheckHealthAnswer(Answer):
    JAVA_CLASS: ClassVar[str] = _API + "CheckHealthAnswer"


@frozen
class MaintainCommand(Command):
    JAVA_CLASS: ClassVar[str] = _API + "MaintainCommand"
    IN_SEQUENCE: ClassVar[bool] = True


@frozen
class MaintainAnswer(Answer):
    JAVA_CLASS: ClassVar[str] = _API + "MaintainAnswer"

    will_migrate: bool = jfield("willMigrate", default=True)


@frozen
class SetupMSListCommand(Command):
    JAVA_CLASS: ClassVar[str] = _LB + "SetupMSListCommand"

    ms_list: list[str] = jfield("msList", factory=list)
    avoid_ms_list: list[str] | None = jfield("avoidMsList", default=None)
    lb_algorithm: str | None = jfield("lbAlgorithm", default=None)
    lb_check_interval: int | None = jfield("lbCheckInterval", default=None)
    trigger_host_lb: bool | None = jfield("triggerHostLb", default=None)


@frozen
class SetupMSListAnswer(Answer):
    JAVA_CLASS: ClassVar[str] = _LB + "SetupMSListAnswer"


@frozen
class MigrateAgentConnectionCommand(Command):
    JAVA_CLASS: ClassVar[str] = _API + "MigrateAgentConnectionCommand"

    ms_list: list[str] = jfield("msList", factory=list)
    avoid_ms_list: list[str] | None = jfield("avoidMsList", default=None)
    lb_algorithm: str | None = jfield("lbAlgorithm", default=None)
    lb_check_interval: int | None = jfield("lbCheckInterval", default=None)


@frozen
class MigrateAgentConnectionAnswer(Answer):
    JAVA_CLASS: ClassVar[str] = _API + "MigrateAgentConnectionAnswer"
