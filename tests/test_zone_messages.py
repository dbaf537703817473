"""Zone and VM messages as CloudStack really writes them: Gson's interface wrapping, enums by
name (kept when unknown), Long map keys, 4.20 aliases, secrets, and whole bodies.

Bodies come from CloudStack's own unit tests where one exists (JsonMergeUtilTest holds a
VirtualMachineTO that 4.21's Gson wrote) and otherwise are rebuilt from the Java classes
(the reference notes' examples), always compact and in Gson's field order, so that
re-encoding them must give the same bytes.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from attrs import frozen

from protocol.codec import decode_body, encode_messages, from_json, to_json
from protocol.errors import BodyError
from protocol.messages.data_to import (
    DataTO,
    NfsTO,
    PrimaryDataStoreTO,
    TemplateObjectTO,
    UnknownDataTO,
    VolumeObjectTO,
)
from protocol.messages.enums import (
    DataStoreRole,
    DiskCacheMode,
    ImageFormat,
    StoragePoolType,
    TrafficType,
    VolumeType,
)
from protocol.messages.ha import CheckOnHostCommand
from protocol.messages.migration import PrepareForMigrationCommand
from protocol.messages.network import ModifySshKeysCommand
from protocol.messages.stats import GetVolumeStatsAnswer
from protocol.messages.storage import (
    ModifyStoragePoolAnswer,
    ModifyStoragePoolCommand,
    StoragePoolInfo,
)
from protocol.messages.to import DiskTO, NicTO, StorageFilerTO, VirtualMachineTO
from protocol.messages.vm import StartAnswer, StartCommand
from protocol.messages.volumes import AttachCommand, CopyCmdAnswer, CopyCommand
from protocol.model import Message, jfield


def decode(body: bytes) -> list[Message]:
    return decode_body(body, length=len(body), compressed=False)


def body_of(name: str, fields: str) -> bytes:
    return f'[{{"{name}":{fields}}}]'.encode()


# utils/src/test/java/com/cloud/utils/json/JsonMergeUtilTest.java (4.21), made compact.
VM_TO_421 = (
    '{"id":20,"name":"i-2-20-QA","state":"Starting","type":"User","cpus":1,"minSpeed":500,'
    '"maxSpeed":500,"minRam":536870912,"maxRam":536870912,"arch":"x86_64","bootArgs":"",'
    '"enableHA":false,"limitCpuUse":false,"enableDynamicallyScaleVm":false,'
    '"vncPassword":"qWI23VL8vzAYpeKcdMF_Kw","details":{"deployvm":"true",'
    '"External:tempalteid":"1"},"uuid":"ba4024c3-a2fd-4fb9-af9e-e4a4b2be59dc",'
    '"enterHardwareSetup":false,"disks":[{"data":{"org.apache.cloudstack.storage.to.'
    'TemplateObjectTO":{"id":0,"format":"ISO","accountId":0,"hvm":false,"bootable":false,'
    '"directDownload":false,"deployAsIs":false,"followRedirects":false}},"diskSeq":3,'
    '"type":"ISO"}],"nics":[{"deviceId":0,"networkRateMbps":200,"defaultNic":true,'
    '"pxeDisable":false,"nicUuid":"f3188e9f-37ba-4853-b711-d6f60dddc5a2","details":'
    '{"MacLearning":"false","ForgedTransmits":"true","PromiscuousMode":"false",'
    '"MacAddressChanges":"true"},"dpdkEnabled":false,"networkId":208,"networkSegmentName":'
    '"D1-A2-Z1-S208","uuid":"e754f4e2-5a1c-4686-995e-1d2eb1235eb4","mac":"02:01:00:d0:00:10",'
    '"dns1":"10.147.28.6","broadcastType":"Vlan","type":"Guest","broadcastUri":"vlan://166",'
    '"isolationUri":"vlan://166","securityGroupEnabled":false}],"configDriveLocation":'
    '"SECONDARY","guestOsDetails":{},"extraConfig":{},"networkIdToNetworkNameMap":'
    '{"208":"D1-A2-Z1-S208"},"metadataManufacturer":"Apache Software Foundation",'
    '"metadataProductName":"CloudStack External Hypervisor"}'
)
POOL = "e007c270-2b1b-3ce9-ae92-a98b94eef7eb"
VOL = "6f7d2c1e-3a4b-4c5d-8e9f-0a1b2c3d4e5f"
# A StartCommand with an NFS root disk, the empty ISO slot and a VLAN NIC (vm-commands.md
# section 2.8, rebuilt from VirtualMachineTO/DiskTO/VolumeObjectTO/NicTO and GsonHelper).
ROOT_DISK = (
    '{"data":{"org.apache.cloudstack.storage.to.VolumeObjectTO":{"uuid":"' + VOL + '",'
    '"volumeType":"ROOT","dataStore":{"org.apache.cloudstack.storage.to.PrimaryDataStoreTO":'
    '{"uuid":"' + POOL + '","name":"nfs1","id":1,"poolType":"NetworkFilesystem",'
    '"host":"10.0.0.5","path":"/export/primary","port":2049,"url":"NetworkFilesystem://'
    "10.0.0.5/export/primary/?ROLE\\u003dPrimary\\u0026STOREUUID\\u003d" + POOL + '",'
    '"details":{},"isManaged":false}},"name":"ROOT-20","size":8589934592,"path":"' + VOL + '",'
    '"volumeId":31,"vmName":"i-2-20-VM","accountId":2,"format":"QCOW2","provisioningType":'
    '"THIN","poolId":1,"id":31,"deviceId":0,"hypervisorType":"KVM","directDownload":false,'
    '"deployAsIs":false,"followRedirects":false}},"diskSeq":0,"path":"' + VOL + '","type":'
    '"ROOT","details":{"managed":"false","storageHost":"10.0.0.5","storagePort":"2049",'
    '"volumeSize":"8589934592","protocoltype":"NetworkFilesystem","storage.pool.disk.wait":'
    '"60"}}'
)
START_VM = (
    VM_TO_421.replace("i-2-20-QA", "i-2-20-VM")
    .replace('"disks":[', '"disks":[' + ROOT_DISK + ",")
    .replace("CloudStack External Hypervisor", "CloudStack KVM Hypervisor")
    .replace(
        '"mac":"02:01:00:d0:00:10"',
        '"ip":"10.1.1.23","netmask":"255.255.255.0","gateway":"10.1.1.1","mac":"02:01:00:d0:00:10"',
    )
)
START_BODY = body_of(
    "com.cloud.agent.api.StartCommand",
    '{"vm":' + START_VM + ',"hostIp":"10.0.0.11","executeInSequence":false,"contextMap":{},'
    '"wait":0,"bypassHostMaintenance":false}',
)


def test_a_4_21_virtual_machine_to_reads_and_writes_back_byte_for_byte() -> None:
    vm = from_json(VirtualMachineTO, json.loads(VM_TO_421), "vm")
    assert vm.name == "i-2-20-QA" and vm.min_ram == 536870912 and vm.cpus == 1
    assert vm.details == {"deployvm": "true", "External:tempalteid": "1"}
    assert vm.network_id_to_network_name_map == {208: "D1-A2-Z1-S208"}  # Long keys
    (iso,) = vm.disks or []
    assert iso.disk_seq == 3 and iso.type is VolumeType.ISO
    assert iso.data == TemplateObjectTO(format=ImageFormat.ISO)  # the empty ISO slot
    (nic,) = vm.nics or []
    assert nic.type is TrafficType.GUEST and nic.broadcast_uri == "vlan://166"
    assert nic.details == {
        "MacLearning": "false",
        "ForgedTransmits": "true",
        "PromiscuousMode": "false",
        "MacAddressChanges": "true",
    }
    assert json.dumps(to_json(vm), separators=(",", ":")) == VM_TO_421


def test_start_command_reads_typed_and_its_answer_echoes_the_vm_unchanged() -> None:
    (cmd,) = decode(START_BODY)
    assert isinstance(cmd, StartCommand) and cmd.vm is not None
    assert encode_messages([cmd]) == START_BODY  # Gson's order and escapes, byte for byte
    root, iso = cmd.vm.disks or []
    assert isinstance(root.data, VolumeObjectTO) and root.data.path == VOL
    store = root.data.data_store
    assert isinstance(store, PrimaryDataStoreTO)
    assert store.pool_type is StoragePoolType.NETWORK_FILESYSTEM and store.uuid == POOL
    assert root.data.format is ImageFormat.QCOW2 and root.data.cache_mode is None
    assert isinstance(iso.data, TemplateObjectTO) and iso.data.path is None
    assert cmd.vm.nics and cmd.vm.nics[0].ip == "10.1.1.23"
    # StartAnswer carries the command's VirtualMachineTO: the same JSON, full password.
    answer = StartAnswer(vm=cmd.vm)
    (echoed,) = json.loads(encode_messages([answer]))
    vm_json = echoed["com.cloud.agent.api.StartAnswer"]["vm"]
    assert vm_json == json.loads(START_VM)
    assert vm_json["vncPassword"] == "qWI23VL8vzAYpeKcdMF_Kw"


def test_prepare_for_migration_raw_vm_builds_the_typed_transfer_object() -> None:
    raw = json.loads(VM_TO_421)
    cmd = PrepareForMigrationCommand(vm=raw)
    vm = from_json(VirtualMachineTO, cmd.vm or {}, "PrepareForMigrationCommand.vm")
    assert vm.name == cmd.vm_name == "i-2-20-QA"
    assert to_json(vm) == raw
    with pytest.raises(BodyError, match=r"PrepareForMigrationCommand\.vm\.cpus: expected integer"):
        from_json(VirtualMachineTO, {**raw, "cpus": "one"}, "PrepareForMigrationCommand.vm")


COPY_ANSWER = body_of(  # vm-commands.md section 3.2: a clone's answer
    "org.apache.cloudstack.storage.command.CopyCmdAnswer",
    '{"newData":{"org.apache.cloudstack.storage.to.VolumeObjectTO":{"size":8589934592,'
    '"path":"' + VOL + '","accountId":0,"format":"QCOW2","id":0,"directDownload":false,'
    '"deployAsIs":false,"followRedirects":false}},"result":true,"contextMap":{},"wait":0,'
    '"bypassHostMaintenance":false}',
)


def test_copy_answer_wraps_new_data_in_its_class_name() -> None:
    answer = CopyCmdAnswer(
        new_data=VolumeObjectTO(path=VOL, size=8589934592, format=ImageFormat.QCOW2)
    )
    assert encode_messages([answer]) == COPY_ANSWER
    assert decode(COPY_ANSWER) == [answer]


def test_copy_command_from_secondary_reads_nfs_and_primary_stores() -> None:
    src = TemplateObjectTO(
        path="template/tmpl/2/201/5e1f.qcow2",
        format=ImageFormat.QCOW2,
        image_data_store=NfsTO(url="nfs://10.0.0.9/export/sec", role=DataStoreRole.IMAGE),
    )
    dest = TemplateObjectTO(
        uuid="5e1f", image_data_store=PrimaryDataStoreTO(uuid=POOL, pool_type=StoragePoolType.RBD)
    )
    (item,) = json.loads(encode_messages([CopyCommand(src_to=src, dest_to=dest, wait=10800)]))
    fields = item["org.apache.cloudstack.storage.command.CopyCommand"]
    src_json = fields["srcTO"]["org.apache.cloudstack.storage.to.TemplateObjectTO"]
    assert src_json["imageDataStore"] == {
        "com.cloud.agent.api.to.NfsTO": {"_url": "nfs://10.0.0.9/export/sec", "_role": "Image"}
    }
    assert decode(encode_messages([CopyCommand(src_to=src, dest_to=dest)]))[0] == CopyCommand(
        src_to=src, dest_to=dest
    )


def test_a_concrete_type_is_not_wrapped_but_the_interface_inside_it_is() -> None:
    disk = DiskTO(data=VolumeObjectTO(path="v"), disk_seq=1, type=VolumeType.DATADISK)
    (item,) = json.loads(encode_messages([AttachCommand(disk=disk, vm_name="i-2-3-VM")]))
    disk_json = item["org.apache.cloudstack.storage.command.AttachCommand"]["disk"]
    assert set(disk_json) == {"data", "diskSeq", "type"}  # DiskTO itself: plain object
    assert list(disk_json["data"]) == ["org.apache.cloudstack.storage.to.VolumeObjectTO"]


def test_an_unknown_data_to_class_is_kept_and_written_back_as_it_came() -> None:
    body = body_of(
        "org.apache.cloudstack.storage.command.DeleteCommand",
        '{"data":{"org.apache.cloudstack.storage.to.SnapshotObjectTO":{"path":"snap/1",'
        '"kvmIncrementalSnapshot":false,"id":4}},"contextMap":{},"wait":0,'
        '"bypassHostMaintenance":false}',
    )
    (cmd,) = decode(body)
    data = getattr(cmd, "data", None)
    assert isinstance(data, UnknownDataTO)
    assert data.java_class == "org.apache.cloudstack.storage.to.SnapshotObjectTO"
    assert data.fields["path"] == "snap/1"
    assert encode_messages([cmd]) == body


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ('{"path":"v"}', r'CopyCmdAnswer\.newData: expected \{"<class name>": \{...\}\}; path'),
        ('{"a.B":{},"c.D":{}}', "expected"),
        ('["x"]', "got array"),
        ('{"":{}}', "class name of the wrapped object is empty"),
        ('{"org.apache.cloudstack.storage.to.VolumeObjectTO":[]}', "VolumeObjectTO holds array"),
        ('{"org.apache.cloudstack.storage.to.VolumeObjectTO":{"size":"big"}}', r"size: expected"),
    ],
)
def test_a_malformed_wrapped_field_is_a_body_error(data: str, message: str) -> None:
    body = body_of("org.apache.cloudstack.storage.command.CopyCmdAnswer", f'{{"newData":{data}}}')
    with pytest.raises(BodyError, match=message):
        decode(body)


def test_pool_types_read_as_string_or_name_object_and_unknown_names_are_kept() -> None:
    def pool_type(value: str) -> Any:
        body = body_of("com.cloud.agent.api.GetVolumeStatsAnswer", f'{{"poolType":{value}}}')
        (answer,) = decode(body)
        assert isinstance(answer, GetVolumeStatsAnswer)
        return answer, answer.pool_type

    _, smp = pool_type('"SharedMountPoint"')
    assert smp is StoragePoolType.SHARED_MOUNT_POINT and smp.known
    _, nfs = pool_type('{"name":"NetworkFilesystem","shared":true}')
    assert nfs is StoragePoolType.NETWORK_FILESYSTEM
    answer, future = pool_type('"Nvmeof"')  # a pool type of a later CloudStack
    assert not future.known and future.value == "Nvmeof"
    assert future == StoragePoolType("Nvmeof") and future != StoragePoolType.RBD
    assert b'"poolType":"Nvmeof"' in encode_messages([answer])
    assert decode(encode_messages([answer])) == [answer]
    for bad in ("5", '{"name":5}', "[]"):
        with pytest.raises(BodyError, match="poolType: expected a StoragePoolType name"):
            pool_type(bad)


def test_an_unknown_cache_mode_does_not_make_a_start_command_unreadable() -> None:
    body = START_BODY.replace(b'"hypervisorType":"KVM"', b'"cacheMode":"WRITEAROUND"')
    (cmd,) = decode(body)
    assert isinstance(cmd, StartCommand) and cmd.vm and cmd.vm.disks
    data = cmd.vm.disks[0].data
    assert isinstance(data, VolumeObjectTO) and data.cache_mode == DiskCacheMode("WRITEAROUND")
    assert data.cache_mode is not None and not data.cache_mode.known


def test_a_long_map_key_that_is_not_a_number_is_a_body_error() -> None:
    raw = {**json.loads(VM_TO_421), "networkIdToNetworkNameMap": {"x208": "n"}}
    with pytest.raises(BodyError, match=r"networkIdToNetworkNameMap: key 'x208' is not an"):
        from_json(VirtualMachineTO, raw, "vm")


def test_4_20_names_are_read_and_4_21_names_written() -> None:
    raw = json.loads(VM_TO_421)
    raw["params"] = raw.pop("details")
    raw["disks"][0]["_details"] = {"io.policy": "native"}
    raw["nics"][0]["isSecurityGroupEnabled"] = raw["nics"][0].pop("securityGroupEnabled")
    raw["nics"][0]["isSecurityGroupEnabled"] = True
    vm = from_json(VirtualMachineTO, raw, "vm")
    assert vm.details == {"deployvm": "true", "External:tempalteid": "1"}
    assert vm.disks and vm.disks[0].details == {"io.policy": "native"}
    assert vm.nics and vm.nics[0].security_group_enabled is True
    written = to_json(vm)
    assert written["details"] == vm.details
    assert written["disks"][0]["details"] == {"io.policy": "native"}
    assert written["nics"][0]["securityGroupEnabled"] is True
    assert "_details" not in written["disks"][0]
    assert "isSecurityGroupEnabled" not in written["nics"][0]


def test_secrets_stay_out_of_repr_but_travel() -> None:
    vm = VirtualMachineTO(vnc_password="vnc-secret-1", vm_data=[["password", "pw-secret-2"]])
    keys = ModifySshKeysCommand(pub_key="ssh-rsa AAAApub", prv_key="PRIVATE-secret-3")
    volume = VolumeObjectTO(passphrase=[1, -2, 3])
    pool = StorageFilerTO(user_info="admin:rbd-secret-4")
    disk = DiskTO(details={"chapInitiatorSecret": "chap-secret-5"})
    store = PrimaryDataStoreTO(details={"powerflex.gw.password": "gw-secret-6"})
    for value in (vm, keys, volume, pool, disk, store, StartCommand(vm=vm)):
        text = repr(value)
        assert "secret" not in text and "PRIVATE" not in text and "-2" not in text, text
    assert b"vnc-secret-1" in encode_messages([StartCommand(vm=vm)])
    assert b"PRIVATE-secret-3" in encode_messages([keys])


def test_modify_storage_pool_round_trip_as_the_ms_and_the_java_agent_write_it() -> None:
    # DefaultHostListener.hostConnect: ModifyStoragePoolCommand(true, pool, details), wait 300.
    command_body = body_of(
        "com.cloud.agent.api.ModifyStoragePoolCommand",
        '{"add":true,"pool":{"id":1,"uuid":"' + POOL + '","host":"10.0.0.5","path":'
        '"/export/primary","port":2049,"type":"NetworkFilesystem"},"localPath":"/mnt//'
        '0f4e6f7c-1f6e-3f0b-9e5d-2b0c5a3d2e11","details":{"nfsmountopts":"vers\\u003d4.1"},'
        '"contextMap":{"logid":"1a2b3c4d"},"wait":300,"bypassHostMaintenance":false}',
    )
    (cmd,) = decode(command_body)
    assert isinstance(cmd, ModifyStoragePoolCommand) and cmd.pool is not None
    assert cmd.pool.type is StoragePoolType.NETWORK_FILESYSTEM and cmd.wait == 300
    assert cmd.details == {"nfsmountopts": "vers=4.1"}
    assert encode_messages([cmd]) == command_body
    # The Java agent's answer: poolInfo built from the command, templateInfo {}, children [].
    answer = ModifyStoragePoolAnswer(
        pool_info=StoragePoolInfo(
            host=cmd.pool.host,
            local_path=cmd.local_path,
            host_path=cmd.pool.path,
            pool_type=cmd.pool.type,
            capacity_bytes=107374182400,
            available_bytes=53687091200,
        ),
        template_info={},
    )
    assert encode_messages([answer]) == body_of(
        "com.cloud.agent.api.ModifyStoragePoolAnswer",
        '{"poolInfo":{"host":"10.0.0.5","localPath":"/mnt//0f4e6f7c-1f6e-3f0b-9e5d-2b0c5a3d2e11",'
        '"hostPath":"/export/primary","poolType":"NetworkFilesystem","capacityBytes":107374182400,'
        '"availableBytes":53687091200},"templateInfo":{},"datastoreClusterChildren":[],'
        '"result":true,"contextMap":{},"wait":0,"bypassHostMaintenance":false}',
    )


def test_check_on_host_command_names_the_suspect_by_its_private_ip() -> None:
    # CheckOnHostCommand(host, reportFailure): HostTO(host) fills ip/netmask/mac per network.
    body = body_of(
        "com.cloud.agent.api.CheckOnHostCommand",
        '{"host":{"guid":"6a7b-LibvirtComputingResource","privateNetwork":{"ip":"10.0.0.12",'
        '"netmask":"255.255.255.0","mac":"52:54:00:aa:bb:cc","securityGroupEnabled":false}},'
        '"reportCheckFailureIfOneStorageIsDown":false,"contextMap":{},"wait":20,'
        '"bypassHostMaintenance":false}',
    )
    (cmd,) = decode(body)
    assert isinstance(cmd, CheckOnHostCommand) and cmd.wait == CheckOnHostCommand.MS_WAIT
    assert cmd.host and cmd.host.private_network and cmd.host.private_network.ip == "10.0.0.12"
    assert cmd.host.public_network is None
    assert encode_messages([cmd]) == body


def test_nic_to_reads_nic_fields_before_network_fields() -> None:
    nic = NicTO(device_id=1, mac="02:00:00:00:00:01", name="cloudbr0")
    assert list(to_json(nic))[:2] == ["deviceId", "defaultNic"]
    assert list(to_json(nic))[-2:] == ["securityGroupEnabled", "name"]


def test_an_interface_inside_a_container_is_refused_at_declaration() -> None:
    # Gson would wrap each element by its declared type; the codec does not (yet), so such a
    # declaration fails the first time it is written instead of writing it unwrapped.
    @frozen
    class Holder:
        items: list[DataTO] | None = jfield("items", default=None)

    with pytest.raises(TypeError, match=r"Holder\.items: interface inside"):
        to_json(Holder(items=[VolumeObjectTO()]))
