"""What goes into migrateToURI3: flags, the destination's XML, the native-TLS policy.

Pure functions on libvirt's constants and on domain XML as libvirt writes it (read back
from libvirt's test driver where it matters)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import libvirt
import pytest

from agent.config import AgentConfig, ConfigError, NativeTls
from agent.hypervisor.migration.call import (
    CallSpec,
    destination_lacks_native_tls,
    flags_for,
    params_for,
    spec_for,
    uses_native_tls,
)
from agent.hypervisor.migration.destxml import DestXmlError, rewrite
from agent.hypervisor.migration.errors import diagnose
from protocol.codec import decode_body
from protocol.messages.migration import MigrateCommand, MigrateDiskInfo

SOURCE_XML = """<domain type='kvm' id='3'>
  <name>i-2-10-VM</name>
  <memory unit='KiB'>131072</memory>
  <vcpu placement='static'>1</vcpu>
  <cputune>
    <shares>500</shares>
  </cputune>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='/var/lib/libvirt/images/5f1a-root'/>
      <backingStore type='file'>
        <format type='qcow2'/>
        <source file='/var/lib/libvirt/images/tmpl-1'/>
      </backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='/mnt/6e2c/data-1'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
    <graphics type='vnc' port='5900' autoport='yes' listen='10.200.0.1' passwd='oldpass1'>
      <listen type='address' address='10.200.0.1'/>
    </graphics>
  </devices>
</domain>
"""


def _config(**props: str) -> AgentConfig:
    return AgentConfig.from_properties({"guid": "g", **props})


@pytest.mark.parametrize(
    ("raw", "policy"),
    [
        ("required", NativeTls.REQUIRED),
        ("Preferred", NativeTls.PREFERRED),
        ("off", NativeTls.OFF),
        ("true", NativeTls.REQUIRED),  # the setting's old values
        ("FALSE", NativeTls.OFF),
    ],
)
def test_native_tls_setting(raw: str, policy: NativeTls) -> None:
    assert _config(**{"migration.native.tls": raw}).migration_native_tls is policy


def test_native_tls_defaults_to_required_and_refuses_other_values() -> None:
    assert _config().migration_native_tls is NativeTls.REQUIRED
    with pytest.raises(ConfigError, match=r"'migration\.native\.tls'.*required, preferred or off"):
        _config(**{"migration.native.tls": "maybe"})


def test_native_tls_only_on_a_secured_host() -> None:
    assert uses_native_tls(NativeTls.REQUIRED, True)
    assert uses_native_tls(NativeTls.PREFERRED, True)
    assert not uses_native_tls(NativeTls.OFF, True)
    assert not uses_native_tls(NativeTls.REQUIRED, False)


def test_the_destination_without_qemu_certificates_is_recognised() -> None:
    # libvirt 9's text when the destination's /etc/pki/qemu is empty (seen in the lab).
    text = (
        "internal error: unable to execute QEMU command 'object-add': Unable to access "
        "credentials /etc/pki/qemu/ca-cert.pem: No such file or directory"
    )
    assert destination_lacks_native_tls(text)
    assert not destination_lacks_native_tls("unable to connect to server: Connection refused")
    d = diagnose(text, vm="v", source="this host", dest="10.0.0.2", uri="qemu+tls://10.0.0.2/")
    # The fix is named, and that it works on a Java-agent host too.
    assert "kvm-agent setup --secure-libvirtd" in d.check
    assert "Java agent" in d.check and "cloud.crt, cloud.key and cloud.ca.crt" in d.check
    assert "migration.native.tls=preferred" in d.check


def _spec(**kw: object) -> CallSpec:
    base: dict[str, object] = {
        "vm": "i-2-10-VM",
        "dest_ip": "10.200.0.2",
        "uri": "qemu+tls://10.200.0.2/system",
        "native_tls": True,
        "speed": -1,
    }
    return CallSpec(**{**base, **kw})  # type: ignore[arg-type]


def test_flags_a_transient_domain_stays_transient() -> None:
    flags = flags_for(_spec(), persistent=False)
    assert flags & libvirt.VIR_MIGRATE_LIVE and flags & libvirt.VIR_MIGRATE_TLS
    assert not flags & libvirt.VIR_MIGRATE_PERSIST_DEST
    assert not flags & libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    assert not flags & libvirt.VIR_MIGRATE_UNSAFE
    assert not flags & (libvirt.VIR_MIGRATE_NON_SHARED_DISK | libvirt.VIR_MIGRATE_NON_SHARED_INC)
    assert not flags_for(_spec(native_tls=False), persistent=False) & libvirt.VIR_MIGRATE_TLS


def test_flags_a_persistent_domain_moves_its_definition_on_success_only() -> None:
    flags = flags_for(_spec(), persistent=True)
    assert flags & libvirt.VIR_MIGRATE_PERSIST_DEST and flags & libvirt.VIR_MIGRATE_UNDEFINE_SOURCE


def test_flags_storage_migration_inside_native_tls() -> None:
    info = MigrateDiskInfo(source_text="/x")
    flags = flags_for(_spec(storage={"a": info}), persistent=False)
    assert flags & libvirt.VIR_MIGRATE_NON_SHARED_DISK and flags & libvirt.VIR_MIGRATE_TLS
    inc = flags_for(_spec(storage={"a": info}, non_shared_inc=True), persistent=False)
    assert (
        inc & libvirt.VIR_MIGRATE_NON_SHARED_INC and not inc & libvirt.VIR_MIGRATE_NON_SHARED_DISK
    )


def test_destination_xml_vnc_shares_and_storage() -> None:
    storage = {
        "5f1a-root": MigrateDiskInfo(
            serial_number="5f1a-root",
            disk_type="FILE",
            driver_type="QCOW2",
            source="FILE",
            source_text="/var/lib/libvirt/images/9c3e-root",
            backing_store_text="/var/lib/libvirt/images/tmpl-1b",
        )
    }
    out = rewrite(
        SOURCE_XML,
        dest_ip="10.200.0.2",
        vnc_password="a-long-password",
        cpu_shares=333,
        storage=storage,
    )
    root = ET.fromstring(out.xml)
    graphics = root.find("./devices/graphics")
    assert graphics is not None
    assert graphics.get("listen") == "10.200.0.2"
    assert graphics.get("passwd") == "a-long-p"  # cut to 8, as VNC authentication uses it
    assert [e.get("address") for e in graphics.iterfind("listen")] == ["10.200.0.2"]
    assert "10.200.0.1" not in out.xml
    assert root.findtext("./cputune/shares") == "333"
    vda, vdb, _cd = root.iterfind("./devices/disk")
    assert vda.find("source").attrib == {"file": "/var/lib/libvirt/images/9c3e-root"}  # type: ignore[union-attr]
    assert vda.find("./backingStore/source").get("file") == "/var/lib/libvirt/images/tmpl-1b"  # type: ignore[union-attr]
    assert vdb.find("source").get("file") == "/mnt/6e2c/data-1"  # type: ignore[union-attr]
    assert out.migrate_disks == ("vda",)


def test_destination_xml_ipv6_and_a_domain_without_shares() -> None:
    xml = SOURCE_XML.replace("<cputune>\n    <shares>500</shares>\n  </cputune>\n", "").replace(
        "10.200.0.1", "fd00::1"
    )
    out = rewrite(xml, dest_ip="fd00::2", cpu_shares=250)
    assert "fd00::1" not in out.xml and out.xml.count("fd00::2") == 2
    # A domain without shares (its libvirt has no cpu controller) is left without.
    assert ET.fromstring(out.xml).find("cputune") is None
    # No shares from the MS (a 4.20 MS's 0 included): the source's stay.
    assert (
        ET.fromstring(rewrite(SOURCE_XML, dest_ip="x", cpu_shares=0).xml).findtext(
            "./cputune/shares"
        )
        == "500"
    )


def test_destination_xml_refuses_a_volume_the_vm_does_not_have() -> None:
    storage = {"nope": MigrateDiskInfo(source_text="/somewhere")}
    with pytest.raises(DestXmlError, match="migrateStorage names nope"):
        rewrite(SOURCE_XML, dest_ip="10.200.0.2", storage=storage)


def test_the_command_as_a_421_ms_sends_it() -> None:
    body = (
        '[{"com.cloud.agent.api.MigrateCommand":{"vmName":"i-2-10-VM","destinationIp":'
        '"10.200.0.2","migrateStorage":{"5f1a-root":{"serialNumber":"5f1a-root","diskType":'
        '"FILE","driverType":"QCOW2","source":"FILE","sourceText":"/var/lib/libvirt/images/'
        '9c3e-root","isSourceDiskOnStorageFileSystem":true}},"migrateStorageManaged":false,'
        '"migrateNonSharedInc":false,"autoConvergence":false,"hostGuid":"b-Libvirt",'
        '"windows":false,"virtualMachine":{"name":"i-2-10-VM","vncPassword":"s3cret-pw",'
        '"cpus":1,"speed":500},"executeInSequence":true,"migrateDiskInfoList":[],'
        '"dpdkInterfaceMapping":{},"newVmCpuShares":250,"vlanToPersistenceMap":{},'
        '"contextMap":{},"wait":86400,"bypassHostMaintenance":false}}]'
    )
    data = body.encode()
    (cmd,) = decode_body(data, length=len(data), compressed=False)
    assert isinstance(cmd, MigrateCommand)
    spec = spec_for(cmd, vm="i-2-10-VM", dest="10.200.0.2", uri="u", native_tls=True, speed=-1)
    assert spec.vnc_password == "s3cret-pw" and spec.cpu_shares == 250
    params, disks = params_for(spec, SOURCE_XML)
    assert disks == ("vda",)
    assert params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] == ["vda"]
    assert params[libvirt.VIR_MIGRATE_PARAM_DEST_NAME] == "i-2-10-VM"
    assert libvirt.VIR_MIGRATE_PARAM_BANDWIDTH not in params
    assert "9c3e-root" in params[libvirt.VIR_MIGRATE_PARAM_DEST_XML]
