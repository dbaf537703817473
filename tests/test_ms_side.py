"""The lab's management-server readers: right answers pass, and default-valued, wrong-class
and Unsupported answers have the consequence the named MS class gives them.

Every answer goes through the codec first (encoded by us, decoded as the MS would), so a
class the MS would not recognise arrives as it would there.
"""

from __future__ import annotations

import attrs
import pytest

from lab.ms_side import READERS, HostEffect, MsVerdict, connect, ha, stats, verdict_for, vm, volumes
from protocol.codec import decode_body, encode_messages
from protocol.messages import ha as ha_messages
from protocol.messages import network, storage
from protocol.messages import stats as stats_messages
from protocol.messages import vm as vm_messages
from protocol.messages import volumes as volume_messages
from protocol.messages.data_to import TemplateObjectTO, VolumeObjectTO
from protocol.messages.enums import ImageFormat, StoragePoolType, StorageResourceType
from protocol.messages.ha import CheckOnHostAnswer, FenceAnswer
from protocol.messages.host import PowerState, ReadyAnswer
from protocol.messages.network import CheckNetworkAnswer
from protocol.messages.stats import (
    GetHostStatsAnswer,
    GetVmStatsAnswer,
    GetVolumeStatsAnswer,
    HostStatsEntry,
    VmStatsEntry,
    VolumeStatsEntry,
)
from protocol.messages.storage import (
    GetStorageStatsAnswer,
    ModifyStoragePoolAnswer,
    StartupStorageCommand,
    StoragePoolInfo,
)
from protocol.messages.to import DiskTO
from protocol.messages.vm import (
    CheckVirtualMachineAnswer,
    GetVncPortAnswer,
    RebootAnswer,
    StartAnswer,
    StartCommand,
    StopAnswer,
)
from protocol.messages.volumes import (
    AttachAnswer,
    AttachCommand,
    CopyCmdAnswer,
    CopyCommand,
    CreateObjectAnswer,
    ResizeVolumeAnswer,
)
from protocol.model import Answer, Command, Message, UnknownMessage, UnsupportedAnswer
from tests.test_zone_messages import START_BODY, VOL, decode

ALERT = HostEffect.ALERT


def wire(answer: Message) -> Message:
    raw = encode_messages([answer])
    (decoded,) = decode_body(raw, length=len(raw), compressed=False)
    return decoded


def unsupported(command: type[Command]) -> Message:
    return wire(UnsupportedAnswer.for_command(command.JAVA_CLASS))


def verdict(reader: object, answer: Message | None) -> MsVerdict:
    assert callable(reader)
    result = reader(wire(answer) if answer is not None else None)
    assert isinstance(result, MsVerdict)
    return result


# --- connect -------------------------------------------------------------------------


def test_check_network_right_answer_and_each_way_to_alert() -> None:
    assert verdict(connect.check_network, CheckNetworkAnswer(result=True)).ok
    for wrong in (unsupported(network.CheckNetworkCommand), Answer(result=True)):
        v = verdict(connect.check_network, wrong)
        assert (v.ok, v.host_effect) == (False, ALERT)
        assert "ClassCastException" in v.reason and "CheckNetworkAnswer" in v.reason
    missing = verdict(connect.check_network, CheckNetworkAnswer(result=False, details="no br9"))
    assert missing.host_effect is ALERT and "Incorrect Network setup" in missing.reason
    assert "no br9" in missing.reason
    reconnect = verdict(connect.check_network, CheckNetworkAnswer(reconnect=True))
    assert reconnect.host_effect is HostEffect.DISCONNECTED
    assert verdict(connect.check_network, None).host_effect is ALERT


def test_modify_storage_pool_reads_pool_info_and_alerts_without_it() -> None:
    good = ModifyStoragePoolAnswer(
        pool_info=StoragePoolInfo(
            local_path="/mnt//0f4e6f7c",
            pool_type=StoragePoolType.SHARED_MOUNT_POINT,
            capacity_bytes=1000,
            available_bytes=400,
        ),
        template_info={},
    )
    v = verdict(connect.modify_storage_pool, good)
    assert v.ok and v.read["localPath"] == "/mnt/0f4e6f7c" and v.read["usedBytes"] == 600
    default = verdict(connect.modify_storage_pool, ModifyStoragePoolAnswer())
    assert (default.ok, default.host_effect) == (False, ALERT)
    assert "NullPointerException" in default.reason
    no_path = ModifyStoragePoolAnswer(pool_info=StoragePoolInfo(capacity_bytes=1))
    assert "localPath" in verdict(connect.modify_storage_pool, no_path).reason
    # The result is checked before the cast: Unsupported fails on it, plain true on the cast.
    on_result = verdict(connect.modify_storage_pool, unsupported(storage.ModifyStoragePoolCommand))
    assert on_result.host_effect is ALERT and "Unable to attach storage pool" in on_result.reason
    on_cast = verdict(connect.modify_storage_pool, Answer(result=True))
    assert on_cast.host_effect is ALERT and "ClassCastException" in on_cast.reason


def test_async_connect_commands_are_not_read_and_persistent_network_needs_an_answer() -> None:
    for command in (network.SetHostParamsCommand(), network.ModifySshKeysCommand()):
        assert verdict_for(command, None).ok
        assert verdict_for(command, unsupported(type(command))).ok
    assert verdict(connect.setup_persistent_network, None).host_effect is ALERT
    failed = verdict(connect.setup_persistent_network, Answer(result=False))
    assert (failed.ok, failed.host_effect) == (False, HostEffect.NONE)
    assert verdict(connect.delete_storage_pool, Answer(result=True)).ok
    assert not verdict(connect.delete_storage_pool, Answer(result=False)).ok


def test_ping_test_and_ready() -> None:
    assert verdict(connect.ping_test, Answer(result=True)).read == {"status": "Up"}
    assert verdict(connect.ping_test, Answer(result=False)).read == {"status": "Unknown"}
    assert verdict(connect.ready, ReadyAnswer(details_map={"host.uefi.enable": "true"})).ok
    assert verdict(connect.ready, Answer(result=True)).ok  # a plain true Answer is accepted
    assert verdict(connect.ready, unsupported(Command)).host_effect is ALERT
    npe = verdict(connect.ready, ReadyAnswer(details_map={"host.virtv2v.version": "2.4"}))
    assert npe.host_effect is HostEffect.REFUSED


def test_startup_storage_command_becomes_a_local_pool_only_when_complete() -> None:
    info = StoragePoolInfo(uuid="u", host_path="/var/lib/libvirt/images", local_path="/x")
    complete = StartupStorageCommand(
        resource_type=StorageResourceType.STORAGE_POOL,
        pool_info=StoragePoolInfo(
            uuid="u",
            host_path="/var/lib/libvirt/images",
            local_path="/var/lib/libvirt/images",
            pool_type=StoragePoolType.FILESYSTEM,
            capacity_bytes=10,
            available_bytes=5,
        ),
    )
    assert connect.startup_storage(complete).ok
    assert not connect.startup_storage(StartupStorageCommand(pool_info=info)).ok
    no_type = StartupStorageCommand(resource_type=StorageResourceType.STORAGE_POOL, pool_info=info)
    assert connect.startup_storage(no_type).host_effect is ALERT


# --- stats ---------------------------------------------------------------------------


def test_stats_readers() -> None:
    host = verdict(
        stats.host_stats, GetHostStatsAnswer(host_stats=HostStatsEntry(average_load=0.5))
    )
    assert host.ok and host.read["averageLoad"] == 0.5
    assert not verdict(stats.host_stats, unsupported(stats_messages.GetHostStatsCommand)).ok
    assert not verdict(stats.host_stats, Answer(result=True)).ok
    vms = GetVmStatsAnswer(vm_stats_map={"i-2-3-VM": VmStatsEntry(num_cpus=2, memory_kbs=1024)})
    assert verdict(stats.vm_stats, vms).read["i-2-3-VM"]["numCPUs"] == 2
    cast = verdict(stats.vm_stats, Answer(result=True))
    assert not cast.ok and "ClassCastException" in cast.reason
    assert not verdict(stats.vm_stats, GetVmStatsAnswer()).ok  # a null map
    volume = GetVolumeStatsAnswer(volume_stats={"v": VolumeStatsEntry(physical_size=5)})
    assert verdict(stats.volume_stats, volume).read["v"]["physicalsize"] == 5
    failed = GetVolumeStatsAnswer(details="Can't get disk stats as pool or disk details ...")
    assert not verdict(stats.volume_stats, failed).ok
    pool = verdict(stats.storage_stats, GetStorageStatsAnswer(capacity_bytes=10, used_bytes=4))
    assert pool.ok and pool.read == {"capacityBytes": 10, "usedBytes": 4}
    assert not verdict(stats.storage_stats, GetStorageStatsAnswer()).ok  # capacity 0
    odd = UnknownMessage(name="com.cloud.agent.api.OddAnswer", fields={"result": True})
    assert "ClassCastException" in stats.storage_stats(odd).reason


# --- HA ------------------------------------------------------------------------------


def test_check_on_host_true_means_down_and_unsupported_reads_up() -> None:
    dead = CheckOnHostAnswer(result=True, determined=True, alive=False)
    assert verdict(ha.check_on_host, dead).read == {"status": "Down"}
    assert verdict(ha.check_on_host, unsupported(ha_messages.CheckOnHostCommand)).read == {
        "status": "Up"
    }


def test_a_cluster_with_an_unsupported_neighbour_never_declares_a_host_down() -> None:
    dead = wire(CheckOnHostAnswer(result=True, determined=True, alive=False))
    alive = wire(CheckOnHostAnswer(result=False, determined=True, alive=True))
    unsup = unsupported(ha_messages.CheckOnHostCommand)
    # The suspect cannot answer (it is dead): its neighbours decide.
    assert ha.investigate(None, [dead]).read == {"status": "Down"}
    blind = ha.investigate(None, [unsup])
    assert blind.read == {"status": "Disconnected"} and not blind.ok
    # The first neighbour that says Up ends the loop; a later Down does not count.
    assert ha.investigate(None, [alive, dead]).read == {"status": "Disconnected"}
    assert ha.investigate(dead, [dead]).read == {"status": "Down"}


def test_fence_needs_a_fence_answer() -> None:
    assert verdict(ha.fence, FenceAnswer(result=True)).ok
    thrown = verdict(ha.fence, unsupported(ha_messages.FenceCommand))
    assert not thrown.ok and "fenceOff throws" in thrown.reason
    assert "next host" in verdict(ha.fence, FenceAnswer(result=False, details="beating")).reason


# --- VMs -----------------------------------------------------------------------------


def start_command() -> StartCommand:
    (command,) = decode(START_BODY)
    assert isinstance(command, StartCommand)
    return command


def test_start_answer_echoing_the_vm_passes_and_anything_else_fails_the_start() -> None:
    command = start_command()
    good = verdict(lambda a: vm.start(command, a), StartAnswer(vm=command.vm))
    assert good.ok and good.read["vncPassword"] == "qWI23VL8vzAYpeKcdMF_Kw"
    assert good.read["guestIp"] == "10.1.1.23"
    for wrong in (unsupported(vm_messages.StartCommand), Answer(result=True)):
        v = verdict(lambda a: vm.start(command, a), wrong)
        assert not v.ok and "Unable to get answer that is of" in v.reason
    assert "NullPointerException" in verdict(lambda a: vm.start(command, a), StartAnswer()).reason
    assert command.vm is not None
    truncated = StartAnswer(vm=attrs.evolve(command.vm, vnc_password="qWI23VL8"))
    assert "vncPassword" in verdict(lambda a: vm.start(command, a), truncated).reason
    failed = verdict(lambda a: vm.start(command, a), StartAnswer(result=False, details="x"))
    assert "another host is tried" in failed.reason
    final = StartAnswer(result=False, details="x", context_map={"stopRetry": "true"})
    assert "no other host" in verdict(lambda a: vm.start(command, a), final).reason


def test_stop_reboot_check_and_vnc() -> None:
    assert verdict(vm.stop, Answer(result=True)).ok  # advanceStop reads result only
    assert not vm.stop(wire(Answer(result=True)), via_send_stop=True).ok
    assert verdict(vm.stop, StopAnswer(result=True, platform="p")).read == {"platform": "p"}
    assert not verdict(vm.stop, unsupported(vm_messages.StopCommand)).ok
    assert verdict(vm.reboot, RebootAnswer(vnc_port=0)).ok
    assert "Unable to get answer" in verdict(vm.reboot, StopAnswer()).reason  # exact class
    assert not verdict(vm.reboot, unsupported(vm_messages.RebootCommand)).ok
    on = CheckVirtualMachineAnswer(state=PowerState.POWER_ON, vnc_port=0)
    assert verdict(vm.check_vm_on_host, on).ok
    off = CheckVirtualMachineAnswer(state=PowerState.POWER_OFF)
    assert not verdict(vm.check_vm_on_host, off).ok
    assert not verdict(vm.check_vm_on_host, unsupported(vm_messages.CheckVirtualMachineCommand)).ok
    port = verdict(vm.vnc_port, GetVncPortAnswer(address="10.0.0.11", port=5901))
    assert port.read == {"address": "10.0.0.11", "port": 5901}
    assert "ClassCastException" in verdict(vm.vnc_port, Answer(result=True)).reason


# --- volumes -------------------------------------------------------------------------


def test_volume_answers() -> None:
    made = VolumeObjectTO(path=VOL, size=8589934592, format=ImageFormat.QCOW2)
    copy = verdict(volumes.copy_to_volume, CopyCmdAnswer(new_data=made))
    assert copy.ok and copy.read == {"path": VOL, "size": 8589934592, "format": "QCOW2"}
    assert (
        "NullPointerException"
        in verdict(volumes.copy_to_volume, CopyCmdAnswer(result=False)).reason
    )
    reload = CopyCmdAnswer(result=False, details="request template reload")
    assert "reloaded" in verdict(volumes.copy_to_volume, reload).reason
    assert "no path" in verdict(volumes.copy_to_volume, Answer(result=True)).reason
    wrong_to = CopyCmdAnswer(new_data=TemplateObjectTO(path="t"))
    assert "ClassCastException" in verdict(volumes.copy_to_volume, wrong_to).reason
    assert not verdict(volumes.copy_to_volume, CopyCmdAnswer(new_data=VolumeObjectTO())).ok
    template = CopyCmdAnswer(new_data=TemplateObjectTO(path="5e1f", size=10))
    assert verdict(volumes.copy_template_to_primary, template).read == {
        "installPath": "5e1f",
        "templateSize": 10,
    }
    assert verdict(volumes.create_volume, CreateObjectAnswer(data=made)).ok
    assert "no path" in verdict(volumes.create_volume, Answer(result=True)).reason
    assert volumes.delete(None).ok and not verdict(volumes.delete, Answer(result=False)).ok
    attached = verdict(volumes.attach, AttachAnswer(disk=DiskTO(disk_seq=1)))
    assert attached.read == {"deviceId": 1}
    assert "ClassCastException" in verdict(volumes.attach, Answer(result=True)).reason
    assert "NullPointerException" in verdict(volumes.attach, AttachAnswer()).reason
    assert verdict(volumes.resize, ResizeVolumeAnswer(new_size=2048)).ok
    assert not verdict(volumes.resize, ResizeVolumeAnswer()).ok  # the size would become 0
    assert "ClassCastException" in verdict(volumes.resize, Answer(result=True)).reason


def test_copy_command_verdict_follows_its_destination() -> None:
    to_template = CopyCommand(dest_to=TemplateObjectTO(uuid="t"))
    answer = wire(CopyCmdAnswer(new_data=TemplateObjectTO(path="t", size=1)))
    assert verdict_for(to_template, answer).ok
    assert not verdict_for(CopyCommand(dest_to=VolumeObjectTO(uuid="v")), answer).ok
    assert verdict_for(AttachCommand(), wire(AttachAnswer(disk=DiskTO(disk_seq=2)))).ok


def test_every_command_of_the_zone_and_vm_modules_has_a_reader() -> None:
    modules = (network, storage, stats_messages, ha_messages, vm_messages, volume_messages)
    commands = {
        obj
        for module in modules
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, Command)
        and not issubclass(obj, Answer)
        and obj.__module__ == module.__name__
    }
    abstract = {volume_messages.StorageSubSystemCommand, storage.StorageNfsVersionCommand}
    special = {vm_messages.StartCommand, volume_messages.CopyCommand, storage.StartupStorageCommand}
    assert commands - abstract - special - set(READERS) == set()
    with pytest.raises(KeyError, match="no MS reader"):
        verdict_for(Command(), None)
