"""Domain XML from a VirtualMachineTO, compared element by element with the Java agent's
(the reconstructed XML of /work/notes/vm-commands.md §4.7, from the §2.8 StartCommand)."""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from typing import Any

import libvirt
import pytest

from agent.config import AgentConfig, ConfigError
from agent.hypervisor import domainxml
from agent.hypervisor.domainxml import DomainSpecError, HostSide
from protocol.codec import from_json
from protocol.messages.to import VirtualMachineTO

POOL = "e007c270-2b1b-3ce9-ae92-a98b94eef7eb"
VOL = "6f7d1a3e-8c2b-4f5e-9a1d-0b2c3d4e5f60"
VM_UUID = "ba4024c3-a2fd-4fb9-af9e-e4a4b2be59dc"

# §2.8, with the elided uuids filled in.
START_VM: dict[str, Any] = {
    "id": 20, "name": "i-2-20-VM", "state": "Starting", "type": "User", "cpus": 1,
    "minSpeed": 500, "maxSpeed": 500, "minRam": 536870912, "maxRam": 536870912,
    "arch": "x86_64", "os": "Ubuntu 22.04 LTS", "platformEmulator": "Ubuntu 22.04 LTS",
    "bootArgs": "", "enableHA": False, "limitCpuUse": False, "enableDynamicallyScaleVm": False,
    "vncPassword": "qWI23VL8vzAYpeKcdMF_Kw", "details": {"deployvm": "true"},
    "uuid": VM_UUID, "enterHardwareSetup": False,
    "disks": [
        {"data": {"org.apache.cloudstack.storage.to.VolumeObjectTO": {
            "uuid": VOL, "volumeType": "ROOT",
            "dataStore": {"org.apache.cloudstack.storage.to.PrimaryDataStoreTO": {
                "uuid": POOL, "name": "nfs1", "id": 1, "poolType": "NetworkFilesystem",
                "host": "10.0.0.5", "path": "/export/primary", "port": 2049,
                "details": {}, "isManaged": False}},
            "name": "ROOT-20", "size": 8589934592, "path": VOL, "volumeId": 31,
            "vmName": "i-2-20-VM", "accountId": 2, "format": "QCOW2",
            "provisioningType": "THIN", "poolId": 1, "id": 31, "deviceId": 0,
            "hypervisorType": "KVM", "directDownload": False, "deployAsIs": False,
            "followRedirects": False}},
         "diskSeq": 0, "path": VOL, "type": "ROOT",
         "details": {"managed": "false", "storageHost": "10.0.0.5"}},
        {"data": {"org.apache.cloudstack.storage.to.TemplateObjectTO": {
            "id": 0, "format": "ISO", "accountId": 0, "hvm": False, "bootable": False,
            "directDownload": False, "deployAsIs": False, "followRedirects": False}},
         "diskSeq": 3, "type": "ISO"},
    ],
    "nics": [{
        "deviceId": 0, "networkRateMbps": 200, "defaultNic": True, "pxeDisable": False,
        "nicUuid": "f3188e9f-0000-4000-8000-000000000001", "details": {"PromiscuousMode": "false"},
        "dpdkEnabled": False, "mtu": 1500, "networkId": 208, "networkSegmentName": "D1-A2-Z1-S208",
        "uuid": "e754f4e2-0000-4000-8000-000000000002", "ip": "10.1.1.23",
        "netmask": "255.255.255.0", "gateway": "10.1.1.1", "mac": "02:01:00:d0:00:10",
        "dns1": "10.147.28.6", "broadcastType": "Vlan", "type": "Guest",
        "broadcastUri": "vlan://166", "isolationUri": "vlan://166",
        "securityGroupEnabled": False, "name": "cloudbr1"}],
    "configDriveLocation": "SECONDARY", "guestOsDetails": {}, "extraConfig": {},
    "networkIdToNetworkNameMap": {"208": "D1-A2-Z1-S208"},
    "metadataManufacturer": "Apache Software Foundation",
    "metadataProductName": "CloudStack KVM Hypervisor",
}  # fmt: skip

# §4.7, with two deliberate differences marked: the empty ISO slot has no <source file=''/>,
# and (Java quirk) the separate <devices> of the memballoon is merged into the one.
JAVA_XML = f"""<domain type='kvm'>
  <name>i-2-20-VM</name>
  <uuid>{VM_UUID}</uuid>
  <description>Ubuntu 22.04 LTS</description>
  <sysinfo type='smbios'><system>
    <entry name='manufacturer'>Apache Software Foundation</entry>
    <entry name='product'>CloudStack KVM Hypervisor</entry>
    <entry name='uuid'>{VM_UUID}</entry>
    <entry name='serial'>{VM_UUID}</entry>
  </system></sysinfo>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='cdrom'/><boot dev='hd'/>
    <smbios mode='sysinfo'/></os>
  <memory>524288</memory><currentMemory>524288</currentMemory>
  <vcpu current="1">1</vcpu>
  <cpu><topology sockets='1' cores='1' threads='1' /></cpu>
  <cputune><shares>500</shares></cputune>
  <features><pae/><apic/><acpi/></features>
  <on_reboot>restart</on_reboot><on_poweroff>destroy</on_poweroff><on_crash>destroy</on_crash>
  <clock offset='utc'><timer name='kvmclock'></timer></clock>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <memballoon model='virtio'><stats period='0'/></memballoon>
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target port='0'/></console>
    <channel type='unix'>
      <source mode='bind' path='/var/lib/libvirt/qemu/i-2-20-VM.org.qemu.guest_agent.0'/>
      <address type='virtio-serial'/><target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <watchdog model='i6300esb' action='none'/>
    <graphics type='vnc' autoport='yes' listen='10.0.0.11' passwd='qWI23VL8'/>
    <input type='tablet' bus='usb'/>
    <disk device='disk' type='file'><driver name='qemu' type='qcow2' cache='none'/>
      <source file='/mnt/{POOL}/{VOL}'/><target dev='vda' bus='virtio'/>
      <serial>{VOL.replace("-", "")[:20]}</serial></disk>
    <disk device='cdrom' type='file'><driver name='qemu' type='raw'/>
      <target dev='hdc' bus='ide'/></disk>
    <interface type='bridge'><source bridge='breth1-166'/>
      <mac address='02:01:00:d0:00:10'/><model type='virtio'/>
      <bandwidth><inbound average='25000' peak='25000'/>
        <outbound average='25000' peak='25000'/></bandwidth>
      <link state='up'/></interface>
  </devices>
</domain>"""

HOST = HostSide(emulator="/usr/bin/qemu-system-x86_64")


def one(el: ET.Element, path: str) -> ET.Element:
    found = el.find(path)
    assert found is not None, path
    return found


def canon(el: ET.Element) -> tuple[Any, ...]:
    """Tag, attributes, text and children as a multiset: Java's order is HashMap order."""
    kids = sorted(canon(c) for c in el)
    return (el.tag, tuple(sorted(el.attrib.items())), (el.text or "").strip(), tuple(kids))


def vm_to(**changes: Any) -> VirtualMachineTO:
    raw = copy.deepcopy(START_VM)
    raw.update(changes)
    return from_json(VirtualMachineTO, raw, "test")


def build(vm: VirtualMachineTO, host: HostSide = HOST, **kw: Any) -> ET.Element:
    return domainxml.build(
        vm,
        host_ip=kw.get("host_ip", "10.0.0.11"),
        bridges=kw.get("bridges", {0: "breth1-166"}),
        disk_paths=kw.get("disk_paths", {0: f"/mnt/{POOL}/{VOL}", 3: None}),
        host=host,
    )


def test_matches_the_java_agents_xml_element_by_element() -> None:
    ours = build(vm_to())
    java = ET.fromstring(JAVA_XML)
    assert [c.tag for c in ours] == [c.tag for c in java]
    for mine, theirs in zip(ours, java, strict=True):
        assert canon(mine) == canon(theirs), mine.tag


def test_the_xml_is_one_libvirt_accepts() -> None:
    # test:/// validates the XML against libvirt's parser (no QEMU needed).
    conn = libvirt.open("test:///default")
    try:
        xml = domainxml.to_xml(build(vm_to(), HostSide()))
        dom = conn.createXML(xml, 0)
        assert dom.name() == "i-2-20-VM" and not dom.isPersistent()
        live = ET.fromstring(dom.XMLDesc(0))
        assert one(live, "./devices/graphics").get("passwd") is None  # not without SECURE
        secure = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE))
        assert one(secure, "./devices/graphics").get("passwd") == "qWI23VL8"
        dom.destroy()
    finally:
        conn.close()


def test_domain_type_is_kvm_unless_the_host_says_qemu() -> None:
    assert build(vm_to()).get("type") == "kvm"  # the Java agent's, always
    assert build(vm_to(), HostSide(domain_type="qemu")).get("type") == "qemu"


def test_vm_domain_type_is_validated() -> None:
    base = {"guid": "g", "host": "ms"}
    assert AgentConfig.from_properties(base).vm_domain_type == "kvm"
    assert AgentConfig.from_properties({**base, "vm.domain.type": "qemu"}).vm_domain_type == "qemu"
    with pytest.raises(ConfigError, match=r"vm\.domain\.type"):
        AgentConfig.from_properties({**base, "vm.domain.type": "xen"})


def test_cpu_shares_cgroup_v1_v2_and_quota() -> None:
    assert domainxml.cpu_shares(vm_to(cpus=2, minSpeed=1000)) == 2000
    assert domainxml.cpu_shares(vm_to(cpus=1, minSpeed=1)) == 2  # clamped
    assert domainxml.cpu_shares(vm_to(cpus=64, minSpeed=5000)) == 262144
    # legacy MS: speed only
    assert domainxml.cpu_shares(vm_to(minSpeed=None, speed=700)) == 700
    # cgroup v2: scaled to 10000 over cores x MHz, rounded up
    assert domainxml.cpu_shares(vm_to(cpus=2, minSpeed=1000), 8 * 2400) == 1042
    xml = build(vm_to(limitCpuUse=True, cpuQuotaPercentage=0.5))
    assert xml.findtext("./cputune/quota") == "5000"
    assert xml.findtext("./cputune/period") == "10000"
    small = build(vm_to(limitCpuUse=True, cpuQuotaPercentage=0.05))
    assert (small.findtext("./cputune/quota"), small.findtext("./cputune/period")) == (
        "1000",
        "20000",
    )
    # No quota unless the VM is capped.
    assert build(vm_to(cpuQuotaPercentage=0.5)).find("./cputune/quota") is None


def test_memory_min_max_and_topology() -> None:
    xml = build(vm_to(cpus=8, minRam=512 << 20, maxRam=1 << 30, vcpuMaxLimit=12))
    assert xml.findtext("memory") == xml.findtext("currentMemory") == "524288"
    assert one(xml, "maxMemory").attrib == {"slots": "16", "unit": "KiB"}
    assert xml.findtext("maxMemory") == "1048576"
    assert one(xml, "vcpu").attrib == {"current": "8"} and xml.findtext("vcpu") == "12"
    assert one(xml, "./cpu/topology").attrib == {"sockets": "2", "cores": "6", "threads": "1"}
    assert one(xml, "./cpu/numa/cell").attrib["cpus"] == "0-11"
    assert len(xml.findall("cpu")) == 1
    # A system VM gets maxRam as its memory.
    router = build(vm_to(type="DomainRouter", minRam=256 << 20, maxRam=512 << 20))
    assert router.findtext("currentMemory") == "524288"
    assert domainxml.topology(4, {"cpu.corespersocket": "2"}) == (2, 2, 1)
    assert domainxml.topology(4, {"cpu.corespersocket": "3"}) == (1, 4, 1)


def test_disks_cache_iotune_buses_and_iso() -> None:
    vm = vm_to()
    disks = copy.deepcopy(START_VM["disks"])
    vol = disks[0]["data"]["org.apache.cloudstack.storage.to.VolumeObjectTO"]
    vol.update(cacheMode="WRITEBACK", bytesReadRate=1048576, iopsWriteRate=300,
               iopsWriteRateMax=600, format="RAW")  # fmt: skip
    data = copy.deepcopy(disks[0])
    data["diskSeq"], data["type"] = 1, "DATADISK"
    iso = disks[1]["data"]["org.apache.cloudstack.storage.to.TemplateObjectTO"]
    iso["path"] = "ubuntu.iso"
    vm = vm_to(disks=[*disks, data], details={"rootDiskController": "scsi"})
    xml = build(vm, disk_paths={0: "/p/root", 1: "/p/data", 3: "/mnt/sec/ubuntu.iso"})
    root, second, cdrom = xml.findall("./devices/disk")
    assert one(root, "driver").attrib == {
        "name": "qemu", "type": "raw", "cache": "writeback", "discard": "unmap"
    }  # fmt: skip
    assert one(root, "target").attrib == {"dev": "sda", "bus": "scsi"}
    tune = {c.tag: c.text for c in one(root, "iotune")}
    assert tune == {"read_bytes_sec": "1048576", "write_iops_sec": "300",
                    "write_iops_sec_max": "600"}  # fmt: skip
    assert one(second, "target").attrib == {"dev": "sdb", "bus": "scsi"}
    assert one(cdrom, "source").get("file") == "/mnt/sec/ubuntu.iso"
    assert cdrom.find("iotune") is None and "cache" not in one(cdrom, "driver").attrib
    assert one(xml, "./devices/controller").attrib["model"] == "virtio-scsi"
    # IDE labels skip hdc/hdd.
    assert [domainxml.dev_label("ide", s) for s in (0, 1, 2, 5)] == ["hda", "hdb", "hde", "hdh"]
    with pytest.raises(DomainSpecError, match="no file for it on this host"):
        build(vm_to(), disk_paths={3: None})


def test_nics_vnc_and_escaping() -> None:
    nics = copy.deepcopy(START_VM["nics"])
    nics[0].update(networkRateMbps=None, pxeDisable=True)
    second = dict(nics[0], deviceId=1, mac="02:01:00:d0:00:11", type="Public")
    xml = build(
        vm_to(
            nics=[second, nics[0]],
            platformEmulator="Windows Server 2022",
            os="Windows <Server> & co",
            vncPassword="a&b<c>d'e\"fgh",
        ),
        bridges={0: "cloudbr1", 1: "cloudbr0"},
    )
    first, public = xml.findall("./devices/interface")
    assert one(first, "source").get("bridge") == "cloudbr1"  # deviceId order
    assert one(public, "source").get("bridge") == "cloudbr0"
    assert one(first, "model").get("type") == "e1000"  # not a PV guest
    assert first.find("bandwidth") is None and one(first, "rom").attrib == {
        "bar": "off",
        "file": "",
    }
    assert one(xml, "./devices/graphics").get("passwd") == "a&b<c>d'"  # 8 characters, escaped
    assert xml.findtext("description") == "Windows <Server> & co"
    assert one(xml, "clock").get("offset") == "localtime"
    text = domainxml.to_xml(xml)
    assert "a&amp;b&lt;c&gt;d'" in text and ET.fromstring(text) is not None
    with pytest.raises(DomainSpecError, match="NIC 1 has no bridge"):
        build(vm_to(nics=[second]), bridges={0: "x"})
