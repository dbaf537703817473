"""Transfer objects of the VM and host commands (``com.cloud.agent.api.to``), CloudStack 4.21.

Field lists in Gson order (subclass fields first), from
``api/src/main/java/com/cloud/agent/api/to/``: VirtualMachineTO, DiskTO, NicTO, NetworkTO,
HostTO, StorageFilerTO, DpdkTO. None of these fields is wrapped: they are declared with
their concrete classes. ``DiskTO.data`` is a ``DataTO`` and is wrapped (see data_to.py).

PR #10514 (4.21) renamed three wire names; the older names are read as aliases:
VirtualMachineTO ``params`` -> ``details`` (4.21 re-added an unused ``params`` of its own),
DiskTO ``_details`` -> ``details``, NetworkTO ``isSecurityGroupEnabled`` ->
``securityGroupEnabled``.

The existing migration messages keep their VirtualMachineTO as a raw dict; build this class
from such a dict with ``protocol.codec.from_json(VirtualMachineTO, raw, "<where>")``.
"""

from __future__ import annotations

from typing import Any

from attrs import frozen

from protocol.messages.data_to import DataTO
from protocol.messages.enums import (
    BootloaderType,
    BroadcastDomainType,
    ConfigDriveLocation,
    StoragePoolType,
    TrafficType,
    VmState,
    VmType,
    VolumeType,
)
from protocol.model import jfield


@frozen
class NetworkTO:
    uuid: str | None = jfield("uuid", default=None)  # the network's uuid
    ip: str | None = jfield("ip", default=None)
    netmask: str | None = jfield("netmask", default=None)
    gateway: str | None = jfield("gateway", default=None)
    mac: str | None = jfield("mac", default=None)
    dns1: str | None = jfield("dns1", default=None)
    dns2: str | None = jfield("dns2", default=None)
    broadcast_type: BroadcastDomainType | None = jfield("broadcastType", default=None)
    type: TrafficType | None = jfield("type", default=None)
    broadcast_uri: str | None = jfield("broadcastUri", default=None)  # vlan://166, vlan://untagged
    isolation_uri: str | None = jfield("isolationUri", default=None)
    security_group_enabled: bool = jfield(
        "securityGroupEnabled", default=False, aliases=("isSecurityGroupEnabled",)
    )
    name: str | None = jfield("name", default=None)  # the KVM traffic label: a bridge
    ip6_address: str | None = jfield("ip6address", default=None)
    ip6_gateway: str | None = jfield("ip6gateway", default=None)
    ip6_cidr: str | None = jfield("ip6cidr", default=None)
    ip6_dns1: str | None = jfield("ip6Dns1", default=None)
    ip6_dns2: str | None = jfield("ip6Dns2", default=None)


@frozen
class NicTO(NetworkTO):
    device_id: int = jfield("deviceId", default=0)
    network_rate_mbps: int | None = jfield("networkRateMbps", default=None)
    network_rate_multicast_mbps: int | None = jfield("networkRateMulticastMbps", default=None)
    default_nic: bool = jfield("defaultNic", default=False)
    pxe_disable: bool = jfield("pxeDisable", default=False)
    nic_uuid: str | None = jfield("nicUuid", default=None)
    nic_sec_ips: list[str] | None = jfield("nicSecIps", default=None)
    # Map<NetworkOffering.Detail, String>: enum keys travel as their names.
    details: dict[str, str] | None = jfield("details", default=None)
    dpdk_enabled: bool = jfield("dpdkEnabled", default=False)
    mtu: int | None = jfield("mtu", default=None)
    network_id: int | None = jfield("networkId", default=None)
    network_segment_name: str | None = jfield("networkSegmentName", default=None)


@frozen
class DiskTO:
    """A disk of a VM; ISO slot at ``diskSeq`` 3 (an empty TemplateObjectTO when no ISO)."""

    data: DataTO | None = jfield("data", default=None)
    disk_seq: int | None = jfield("diskSeq", default=None)
    path: str | None = jfield("path", default=None)
    type: VolumeType | None = jfield("type", default=None)
    # managed, storageHost, io.policy... and CHAP secrets for managed storage.
    details: dict[str, str] | None = jfield(
        "details", default=None, aliases=("_details",), secret=True
    )


@frozen
class DpdkTO:
    path: str | None = jfield("path", default=None)
    port: str | None = jfield("port", default=None)
    mode: str | None = jfield("mode", default=None)


@frozen
class VirtualMachineTO:
    id: int = jfield("id", default=0)
    name: str | None = jfield("name", default=None)  # instance name, i-2-20-VM
    bootloader: BootloaderType | None = jfield("bootloader", default=None)
    state: VmState | None = jfield("state", default=None)
    type: VmType | None = jfield("type", default=None)
    cpus: int = jfield("cpus", default=0)
    speed: int | None = jfield("speed", default=None)  # MHz, only from 4.0/4.1 servers
    min_speed: int | None = jfield("minSpeed", default=None)  # MHz
    max_speed: int | None = jfield("maxSpeed", default=None)  # MHz
    min_ram: int = jfield("minRam", default=0)  # bytes
    max_ram: int = jfield("maxRam", default=0)  # bytes
    host_name: str | None = jfield("hostName", default=None)
    arch: str | None = jfield("arch", default=None)
    os: str | None = jfield("os", default=None)
    platform_emulator: str | None = jfield("platformEmulator", default=None)
    boot_args: str | None = jfield("bootArgs", default=None)
    bootup_scripts: list[str] | None = jfield("bootupScripts", default=None)
    enable_ha: bool = jfield("enableHA", default=False)
    limit_cpu_use: bool = jfield("limitCpuUse", default=False)
    enable_dynamically_scale_vm: bool = jfield("enableDynamicallyScaleVm", default=False)
    # The MS's full password (may exceed 8 characters); StartAnswer must echo it unchanged.
    vnc_password: str | None = jfield("vncPassword", default=None, secret=True)
    vnc_addr: str | None = jfield("vncAddr", default=None)
    details: dict[str, str] | None = jfield("details", default=None, aliases=("params",))
    params: dict[str, str] | None = jfield("params", default=None)  # 4.21: unused
    uuid: str | None = jfield("uuid", default=None)
    boot_type: str | None = jfield("bootType", default=None)
    boot_mode: str | None = jfield("bootMode", default=None)
    enter_hardware_setup: bool = jfield("enterHardwareSetup", default=False)
    disks: list[DiskTO] | None = jfield("disks", default=None)
    nics: list[NicTO] | None = jfield("nics", default=None)
    gpu_device: dict[str, Any] | None = jfield("gpuDevice", default=None)  # GPUDeviceTO, raw
    vcpu_max_limit: int | None = jfield("vcpuMaxLimit", default=None)
    # Config-drive metadata; may hold the VM's password.
    vm_data: list[list[str | None]] | None = jfield("vmData", default=None, secret=True)
    config_drive_label: str | None = jfield("configDriveLabel", default=None)
    config_drive_iso_root_folder: str | None = jfield("configDriveIsoRootFolder", default=None)
    config_drive_iso_file: str | None = jfield("configDriveIsoFile", default=None)
    config_drive_location: ConfigDriveLocation | None = jfield(
        "configDriveLocation", default=ConfigDriveLocation.SECONDARY
    )
    cpu_quota_percentage: float | None = jfield("cpuQuotaPercentage", default=None)
    guest_os_details: dict[str, str] | None = jfield("guestOsDetails", factory=dict)
    extra_config: dict[str, str] | None = jfield("extraConfig", factory=dict)
    network_id_to_network_name_map: dict[int, str] | None = jfield(
        "networkIdToNetworkNameMap", factory=dict
    )
    # DeployAsIsInfoTO (VMware OVF properties), raw; its properties are not to be logged.
    deploy_as_is_info: dict[str, Any] | None = jfield("deployAsIsInfo", default=None, secret=True)
    metadata_manufacturer: str | None = jfield("metadataManufacturer", default=None)
    metadata_product_name: str | None = jfield("metadataProductName", default=None)


@frozen
class HostTO:
    """A host as CheckOnHostCommand and FenceCommand name it (ip, netmask, mac per network)."""

    guid: str | None = jfield("guid", default=None)
    private_network: NetworkTO | None = jfield("privateNetwork", default=None)
    public_network: NetworkTO | None = jfield("publicNetwork", default=None)
    storage_network1: NetworkTO | None = jfield("storageNetwork1", default=None)
    storage_network2: NetworkTO | None = jfield("storageNetwork2", default=None)
    parent: str | None = jfield("parent", default=None)


@frozen
class StorageFilerTO:
    """A primary pool as ModifyStoragePool/DeleteStoragePool/ResizeVolume carry it."""

    id: int = jfield("id", default=0)
    uuid: str | None = jfield("uuid", default=None)
    host: str | None = jfield("host", default=None)
    path: str | None = jfield("path", default=None)
    user_info: str | None = jfield("userInfo", default=None, secret=True)  # RBD: user:secret
    port: int = jfield("port", default=0)
    type: StoragePoolType | None = jfield("type", default=None)
