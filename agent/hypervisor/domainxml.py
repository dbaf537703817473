"""A StartCommand's VirtualMachineTO as libvirt domain XML, as CloudStack's KVM agent builds it
(LibvirtComputingResource.createVMFromSpec, LibvirtVMDef). Pure: no libvirt, no I/O.

What the host must say is passed in: the bridge of each NIC (agent.hypervisor.vifs), the file
of each disk (resolved in its pool), and :class:`HostSide` (emulator, cgroup version).

Where this differs from the Java agent, on purpose: one ``<devices>`` and one ``<cpu>`` (Java
writes two of each when ballooning or NUMA apply); file volumes are ``type='file'`` whatever
their format (Java makes RAW files ``type='block'``); the VNC password is cut to 8
characters *before* escaping; an empty ISO slot is a cdrom with no ``<source>``.
"""

from __future__ import annotations

import uuid as uuidlib
import xml.etree.ElementTree as ET
from collections.abc import Mapping

from attrs import frozen

from protocol.messages.data_to import VolumeObjectTO
from protocol.messages.enums import DiskCacheMode, ImageFormat, TrafficType, VmType, VolumeType
from protocol.messages.to import DiskTO, NicTO, VirtualMachineTO

SHARES_V1 = (2, 262144)  # cgroup v1 cpu.shares limits
WEIGHT_V2 = (2, 10000)  # cgroup v2 cpu.weight limits
QUOTA_PERIOD, QUOTA_MIN, PERIOD_MAX = 10000, 1000, 1000000  # LibvirtVMDef.CpuTuneDef, µs
VNC_PASSWORD_MAX = 8  # VNC's DES challenge uses 8 characters
ISO_SEQ = 3  # the ISO slot's diskSeq (hdc)
_PV_PREFIXES = (
    "Fedora",
    "CentOS",
    "Red Hat Enterprise Linux",
    "Debian GNU/Linux",
    "FreeBSD",
    "Oracle",
    "Rocky Linux",
    "AlmaLinux",
    "Other PV",
)
_BUSES = ("ide", "scsi", "virtio", "xen", "usb", "uml", "fdc", "sata", "virtio-blk")
_NIC_MODELS = ("e1000", "virtio", "rtl8139", "ne2k_pci", "vmxnet3")


class DomainSpecError(ValueError):
    """The VirtualMachineTO cannot be made into a domain; the text names the field."""


@frozen
class HostSide:
    """What the host contributes. ``cgroup_v2_capacity``: host cores x MHz when the host uses
    cgroup v2 (shares are scaled to it), 0 on cgroup v1."""

    emulator: str | None = None
    domain_type: str = "kvm"  # as the Java agent; "qemu" (TCG) where KVM is unusable
    cgroup_v2_capacity: int = 0
    sockets_path: str = "/var/lib/libvirt/qemu"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def cpu_shares(vm: VirtualMachineTO, cgroup_v2_capacity: int = 0) -> int:
    """LibvirtComputingResource.calculateCpuShares: vCPUs x MHz (minSpeed, else speed),
    scaled to cgroup v2's 10000 over the host's capacity when it uses v2."""
    speed = vm.min_speed if vm.min_speed is not None else vm.speed
    if speed is None:
        raise DomainSpecError("the VirtualMachineTO has neither minSpeed nor speed (MHz)")
    requested = vm.cpus * speed
    if cgroup_v2_capacity > 0:
        scaled = -(-requested * WEIGHT_V2[1] // cgroup_v2_capacity)  # ceil
        return min(max(scaled, WEIGHT_V2[0]), WEIGHT_V2[1])
    return min(max(requested, SHARES_V1[0]), SHARES_V1[1])


def quota_and_period(vm: VirtualMachineTO) -> tuple[int, int] | None:
    """setQuotaAndPeriod: (quota, period) in µs when the VM's CPU use is capped."""
    pct = vm.cpu_quota_percentage
    if not vm.limit_cpu_use or pct is None or pct <= 0:
        return None
    period, quota = QUOTA_PERIOD, int(QUOTA_PERIOD * pct)
    if quota < QUOTA_MIN:
        quota, period = QUOTA_MIN, min(int(QUOTA_MIN / pct), PERIOD_MAX)
    return quota, period


def topology(vcpus: int, details: Mapping[str, str]) -> tuple[int, int, int]:
    """setCpuTopology: (sockets, cores, threads)."""

    def number(key: str) -> int:
        try:
            return int(details.get(key, "1"))
        except ValueError:
            return 1

    cores, threads = number("cpu.corespersocket"), number("cpu.threadspercore")
    if cores < 1 or threads < 1 or cores * threads > vcpus or vcpus % (cores * threads):
        cores = threads = 1
    if cores == 1 and threads == 1:
        cores = 6 if vcpus % 6 == 0 else 4 if vcpus % 4 == 0 else 1
        return vcpus // cores, cores, 1
    return vcpus // threads // cores, cores, threads


def guest_bus(platform: str | None) -> str:
    """getGuestDiskModel (no UEFI, x86): the root disk's bus from the guest OS name."""
    if platform is None:
        return "ide"
    if platform.startswith("Other PV Virtio-SCSI"):
        return "scsi"
    if "Ubuntu" in platform or platform.startswith(_PV_PREFIXES):
        return "virtio"
    return "ide"


def _detail_choice(details: Mapping[str, str], key: str, allowed: tuple[str, ...]) -> str | None:
    value = (details.get(key) or "").strip().lower()
    return value if value in allowed else None


def dev_label(bus: str, seq: int) -> str:
    """DiskDef.getDevLabel: vda, sdb, hda; IDE skips hdc/hdd for seq >= 2 (seq 2 -> hde)."""
    if bus in ("virtio", "virtio-blk"):
        return "vd" + chr(ord("a") + seq)
    if bus in ("scsi", "sata"):
        return "sd" + chr(ord("a") + seq)
    return "hd" + chr(ord("a") + (seq + 2 if seq >= 2 else seq))


def disk_serial(volume_uuid: str) -> str:
    return volume_uuid.replace("-", "")[:20]


def _iotune(disk: ET.Element, vol: VolumeObjectTO) -> None:
    base = (vol.bytes_read_rate, vol.bytes_write_rate, vol.iops_read_rate, vol.iops_write_rate)
    if not any(v and v > 0 for v in base):
        return
    iotune = _sub(disk, "iotune")
    for name, value in (
        ("read_bytes_sec", vol.bytes_read_rate),
        ("write_bytes_sec", vol.bytes_write_rate),
        ("read_iops_sec", vol.iops_read_rate),
        ("write_iops_sec", vol.iops_write_rate),
        ("read_bytes_sec_max", vol.bytes_read_rate_max),
        ("write_bytes_sec_max", vol.bytes_write_rate_max),
        ("read_iops_sec_max", vol.iops_read_rate_max),
        ("write_iops_sec_max", vol.iops_write_rate_max),
        ("read_bytes_sec_max_length", vol.bytes_read_rate_max_length),
        ("write_bytes_sec_max_length", vol.bytes_write_rate_max_length),
        ("read_iops_sec_max_length", vol.iops_read_rate_max_length),
        ("write_iops_sec_max_length", vol.iops_write_rate_max_length),
    ):
        if value and value > 0:
            _sub(iotune, name, str(value))


def _disk(devices: ET.Element, disk: DiskTO, path: str | None, bus: str, seq: int) -> None:
    if disk.type is VolumeType.ISO:
        el = _sub(devices, "disk", device="cdrom", type="file")
        _sub(el, "driver", name="qemu", type="raw")
        if path:
            _sub(el, "source", file=path)
        # defISODisk: the ISO slot (seq 3) is hdc, the config drive (seq 4) hdd.
        label = {ISO_SEQ: "hdc", ISO_SEQ + 1: "hdd"}.get(seq) or dev_label("ide", seq)
        _sub(el, "target", dev=label, bus="ide")
        return
    vol = disk.data
    if not isinstance(vol, VolumeObjectTO):
        raise DomainSpecError(f"disk {seq}: its data is not a VolumeObjectTO")
    if not path:
        raise DomainSpecError(f"disk {seq} ({vol.uuid}): no file for it on this host")
    el = _sub(devices, "disk", device="disk", type="file")
    fmt = "raw" if vol.format is ImageFormat.RAW else "qcow2"
    driver = {"name": "qemu", "type": fmt}
    cache = vol.cache_mode
    if cache is None:
        driver["cache"] = "none"
    elif cache is not DiskCacheMode.HYPERVISOR_DEFAULT:
        driver["cache"] = cache.value.lower()
    if bus == "scsi":
        driver["discard"] = "unmap"
    _sub(el, "driver", **driver)
    _sub(el, "source", file=path)
    _sub(el, "target", dev=dev_label(bus, seq), bus=bus if bus != "virtio-blk" else "virtio")
    _iotune(el, vol)
    if vol.uuid:
        _sub(el, "serial", disk_serial(vol.uuid))


def nic_model(vm: VirtualMachineTO) -> str:
    """VifDriverBase.getGuestNicModel: details nicAdapter, else virtio for PV guests."""
    chosen = _detail_choice(vm.details or {}, "nicAdapter", _NIC_MODELS)
    return chosen or ("virtio" if guest_bus(vm.platform_emulator) != "ide" else "e1000")


def rate_kbytes(nic: NicTO) -> int:
    """VifDriverBase.getNetworkRateKbps: Mbit/s -> KB/s (libvirt's unit); 0: no limit."""
    rate = nic.network_rate_mbps
    if rate is None or rate <= 0 or nic.type not in (TrafficType.GUEST, TrafficType.PUBLIC):
        return 0
    return rate * 125


def _interface(devices: ET.Element, nic: NicTO, bridge: str, model: str) -> None:
    el = _sub(devices, "interface", type="bridge")
    _sub(el, "source", bridge=bridge)
    if nic.mac:
        _sub(el, "mac", address=nic.mac)
    _sub(el, "model", type=model)
    rate = rate_kbytes(nic)
    if rate:
        bandwidth = _sub(el, "bandwidth")
        _sub(bandwidth, "inbound", average=str(rate), peak=str(rate))
        _sub(bandwidth, "outbound", average=str(rate), peak=str(rate))
    if nic.pxe_disable:
        _sub(el, "rom", bar="off", file="")
    _sub(el, "link", state="up")


def _valid_uuid(value: str | None) -> str:
    try:
        return str(uuidlib.UUID(value or ""))
    except ValueError:
        return str(uuidlib.uuid4())  # as the Java agent (getUuid): a random one


def build(
    vm: VirtualMachineTO,
    *,
    host_ip: str | None,
    bridges: Mapping[int, str],
    disk_paths: Mapping[int, str | None],
    host: HostSide,
) -> ET.Element:
    """The ``<domain>``. ``bridges``: NIC deviceId -> bridge; ``disk_paths``: diskSeq ->
    the file (None for an empty ISO slot)."""
    if not vm.name:
        raise DomainSpecError("the VirtualMachineTO has no name")
    if vm.cpus < 1:
        raise DomainSpecError(f"VM {vm.name}: cpus is {vm.cpus}")
    if vm.min_ram <= 0 or vm.max_ram <= 0:
        raise DomainSpecError(f"VM {vm.name}: minRam/maxRam missing ({vm.min_ram}/{vm.max_ram})")
    details = vm.details or {}
    if details.get("UEFI"):
        raise DomainSpecError(f"VM {vm.name}: UEFI boot is not supported by this agent yet")
    user = vm.type in (None, VmType.USER)
    vm_uuid = _valid_uuid(vm.uuid)

    dom = ET.Element("domain", type=host.domain_type)
    _sub(dom, "name", vm.name)
    _sub(dom, "uuid", vm_uuid)
    _sub(dom, "description", vm.os or "")
    system = _sub(_sub(dom, "sysinfo", type="smbios"), "system")
    for key, value in (
        ("manufacturer", vm.metadata_manufacturer or "Apache Software Foundation"),
        ("product", vm.metadata_product_name or "CloudStack KVM Hypervisor"),
        ("uuid", vm_uuid),
        ("serial", vm_uuid),
    ):
        _sub(system, "entry", value, name=key)
    os_el = _sub(dom, "os")
    _sub(os_el, "type", "hvm", arch=vm.arch or "x86_64", machine="pc")
    _sub(os_el, "boot", dev="cdrom")
    _sub(os_el, "boot", dev="hd")
    _sub(os_el, "smbios", mode="sysinfo")

    # Java: <memory> is the boot allocation, minRam for User VMs (ballooning on), maxRam
    # for system VMs; <maxMemory> (hotplug ceiling) when maxRam is above it.
    current = (vm.min_ram if user else vm.max_ram) // 1024
    maximum = vm.max_ram // 1024
    _sub(dom, "memory", str(current))
    _sub(dom, "currentMemory", str(current))
    vcpus_max = vm.vcpu_max_limit or vm.cpus
    if maximum > current:
        _sub(dom, "maxMemory", str(maximum), slots="16", unit="KiB")
    _sub(dom, "vcpu", str(vcpus_max), current=str(vm.cpus))

    cpu = _sub(dom, "cpu")
    mode = details.get("guest.cpu.mode")
    if mode == "custom" and details.get("guest.cpu.model"):
        cpu.set("mode", "custom")
        cpu.set("match", "exact")
        _sub(cpu, "model", details["guest.cpu.model"], fallback="allow")
    elif mode in ("host-model", "host-passthrough"):
        cpu.set("mode", mode)
    sockets, cores, threads = topology(vcpus_max, details)
    _sub(cpu, "topology", sockets=str(sockets), cores=str(cores), threads=str(threads))
    if maximum > current:
        numa = _sub(cpu, "numa")
        _sub(numa, "cell", id="0", cpus=f"0-{vcpus_max - 1}", memory=str(current), unit="KiB")

    cputune = _sub(dom, "cputune")
    _sub(cputune, "shares", str(cpu_shares(vm, host.cgroup_v2_capacity)))
    if (capped := quota_and_period(vm)) is not None:
        _sub(cputune, "quota", str(capped[0]))
        _sub(cputune, "period", str(capped[1]))

    features = _sub(dom, "features")
    for name in ("pae", "apic", "acpi"):
        _sub(features, name)
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_crash", "destroy")
    windows = (vm.os or "").startswith("Windows")
    clock = _sub(dom, "clock", offset="localtime" if windows else "utc")
    if windows:
        _sub(clock, "timer", name="hypervclock", present="yes")
    elif not user or guest_bus(vm.os) != "ide":
        _sub(clock, "timer", name="kvmclock")

    devices = _sub(dom, "devices")
    if host.emulator:
        _sub(devices, "emulator", host.emulator)
    _sub(_sub(devices, "memballoon", model="virtio"), "stats", period="0")
    _sub(_sub(devices, "serial", type="pty"), "target", port="0")
    _sub(_sub(devices, "console", type="pty"), "target", port="0")
    channel = _sub(devices, "channel", type="unix")
    agent_name = "org.qemu.guest_agent.0"
    _sub(channel, "source", mode="bind", path=f"{host.sockets_path}/{vm.name}.{agent_name}")
    _sub(channel, "address", type="virtio-serial")
    _sub(channel, "target", type="virtio", name=agent_name)
    _sub(devices, "watchdog", model="i6300esb", action="none")
    graphics = {"type": "vnc", "autoport": "yes", "listen": host_ip or ""}
    if vm.vnc_password:
        graphics["passwd"] = vm.vnc_password[:VNC_PASSWORD_MAX]
    _sub(devices, "graphics", **graphics)
    _sub(devices, "input", type="tablet", bus="usb")

    root_bus = _detail_choice(details, "rootDiskController", _BUSES) or guest_bus(
        vm.platform_emulator
    )
    data_bus = _detail_choice(details, "dataDiskController", _BUSES) or (
        "scsi" if root_bus == "scsi" else "virtio"
    )
    scsi_disks = 0
    for disk in sorted(vm.disks or [], key=lambda d: d.disk_seq or 0):
        seq = disk.disk_seq or 0
        bus = root_bus if disk.type is VolumeType.ROOT else data_bus
        scsi_disks += disk.type is not VolumeType.ISO and bus == "scsi"
        _disk(devices, disk, disk_paths.get(seq), bus, seq)
    for index in range((scsi_disks + 6) // 7):
        _sub(devices, "controller", type="scsi", index=str(index), model="virtio-scsi")

    model = nic_model(vm)
    for nic in sorted(vm.nics or [], key=lambda n: n.device_id):
        bridge = bridges.get(nic.device_id)
        if bridge is None:
            raise DomainSpecError(f"VM {vm.name}: NIC {nic.device_id} has no bridge")
        _interface(devices, nic, bridge, model)
    return dom


def to_xml(dom: ET.Element) -> str:
    return ET.tostring(dom, encoding="unicode")
