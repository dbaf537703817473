"""VM, volume and transfer-object messages field by field against CloudStack 4.21.

Each list is written by hand from the Java class named in its comment (paths relative to
CloudStack's source tree at 4.21.0.0, commit f9513b47bf8c); see tests/golden.py for the rules.
A completeness test makes sure no class of the zone/VM modules is left without a list.
"""

from __future__ import annotations

import inspect

import attrs
import pytest

from protocol.jtypes import RawImplementation
from protocol.messages import data_to, ha, network, stats, storage, to, vm, volumes
from tests.golden import ANSWER, COMMAND, Schema, assert_golden
from tests.test_golden_zone import GOLDEN as ZONE_GOLDEN

# api/src/main/java/com/cloud/agent/api/to/NetworkTO.java
NETWORK_TO: Schema = [
    ("uuid", str),
    ("ip", str),
    ("netmask", str),
    ("gateway", str),
    ("mac", str),
    ("dns1", str),
    ("dns2", str),
    ("broadcastType", str),
    ("type", str),
    ("broadcastUri", str),
    ("isolationUri", str),
    ("securityGroupEnabled", bool),
    ("name", str),
    ("ip6address", str),
    ("ip6gateway", str),
    ("ip6cidr", str),
    ("ip6Dns1", str),
    ("ip6Dns2", str),
]
# core/.../agent/api/RebootCommand.java
REBOOT: Schema = [("vmName", str), ("vm", dict), ("executeInSequence", bool), *COMMAND]
# core/.../storage/to/DownloadableObjectTO.java
DOWNLOADABLE: Schema = [("followRedirects", bool)]
IO_LIMITS: Schema = [
    (f"{kind}{direction}Rate{suffix}", int)
    for kind in ("bytes", "iops")
    for direction in ("Read", "Write")
    for suffix in ("", "Max", "MaxLength")
]

GOLDEN: dict[type, Schema] = {
    to.NetworkTO: NETWORK_TO,
    # api/.../agent/api/to/NicTO.java (extends NetworkTO)
    to.NicTO: [
        ("deviceId", int),
        ("networkRateMbps", int),
        ("networkRateMulticastMbps", int),
        ("defaultNic", bool),
        ("pxeDisable", bool),
        ("nicUuid", str),
        ("nicSecIps", list),
        ("details", dict),
        ("dpdkEnabled", bool),
        ("mtu", int),
        ("networkId", int),
        ("networkSegmentName", str),
        *NETWORK_TO,
    ],
    # api/.../agent/api/to/DiskTO.java
    to.DiskTO: [("data", dict), ("diskSeq", int), ("path", str), ("type", str), ("details", dict)],
    # api/.../agent/api/to/DpdkTO.java
    to.DpdkTO: [("path", str), ("port", str), ("mode", str)],
    # api/.../agent/api/to/HostTO.java
    to.HostTO: [
        ("guid", str),
        ("privateNetwork", dict),
        ("publicNetwork", dict),
        ("storageNetwork1", dict),
        ("storageNetwork2", dict),
        ("parent", str),
    ],
    # api/.../agent/api/to/StorageFilerTO.java
    to.StorageFilerTO: [
        ("id", int),
        ("uuid", str),
        ("host", str),
        ("path", str),
        ("userInfo", str),
        ("port", int),
        ("type", str),
    ],
    # api/.../agent/api/to/VirtualMachineTO.java
    to.VirtualMachineTO: [
        ("id", int),
        ("name", str),
        ("bootloader", str),
        ("state", str),
        ("type", str),
        ("cpus", int),
        ("speed", int),
        ("minSpeed", int),
        ("maxSpeed", int),
        ("minRam", int),
        ("maxRam", int),
        ("hostName", str),
        ("arch", str),
        ("os", str),
        ("platformEmulator", str),
        ("bootArgs", str),
        ("bootupScripts", list),
        ("enableHA", bool),
        ("limitCpuUse", bool),
        ("enableDynamicallyScaleVm", bool),
        ("vncPassword", str),
        ("vncAddr", str),
        ("details", dict),
        ("params", dict),
        ("uuid", str),
        ("bootType", str),
        ("bootMode", str),
        ("enterHardwareSetup", bool),
        ("disks", list),
        ("nics", list),
        ("gpuDevice", dict),
        ("vcpuMaxLimit", int),
        ("vmData", list),
        ("configDriveLabel", str),
        ("configDriveIsoRootFolder", str),
        ("configDriveIsoFile", str),
        ("configDriveLocation", str),
        ("cpuQuotaPercentage", float),
        ("guestOsDetails", dict),
        ("extraConfig", dict),
        ("networkIdToNetworkNameMap", dict),
        ("deployAsIsInfo", dict),
        ("metadataManufacturer", str),
        ("metadataProductName", str),
    ],
    data_to.DownloadableObjectTO: DOWNLOADABLE,
    # core/.../storage/to/VolumeObjectTO.java (extends DownloadableObjectTO)
    data_to.VolumeObjectTO: [
        ("uuid", str),
        ("volumeType", str),
        ("dataStore", dict),
        ("name", str),
        ("size", int),
        ("usableSize", int),
        ("path", str),
        ("volumeId", int),
        ("vmName", str),
        ("accountId", int),
        ("chainInfo", str),
        ("format", str),
        ("provisioningType", str),
        ("poolId", int),
        ("id", int),
        ("deviceId", int),
        *IO_LIMITS,
        ("cacheMode", str),
        ("hypervisorType", str),
        ("migrationOptions", dict),
        ("directDownload", bool),
        ("dataStoreUuid", str),
        ("deployAsIs", bool),
        ("updatedDataStoreUUID", str),
        ("vSphereStoragePolicyId", str),
        ("passphrase", list),
        ("encryptFormat", str),
        ("checkpointPaths", list),
        ("checkpointImageStoreUrls", list),
        *DOWNLOADABLE,
    ],
    # core/.../storage/to/TemplateObjectTO.java (extends DownloadableObjectTO)
    data_to.TemplateObjectTO: [
        ("path", str),
        ("origUrl", str),
        ("uuid", str),
        ("id", int),
        ("format", str),
        ("accountId", int),
        ("checksum", str),
        ("hvm", bool),
        ("displayText", str),
        ("imageDataStore", dict),
        ("name", str),
        ("guestOsType", str),
        ("size", int),
        ("physicalSize", int),
        ("hypervisorType", str),
        ("bootable", bool),
        ("uniqueName", str),
        ("directDownload", bool),
        ("deployAsIs", bool),
        ("deployAsIsConfiguration", str),
        *DOWNLOADABLE,
    ],
    # core/.../storage/to/PrimaryDataStoreTO.java (static fields are not on the wire)
    data_to.PrimaryDataStoreTO: [
        ("uuid", str),
        ("name", str),
        ("type", str),
        ("id", int),
        ("poolType", str),
        ("host", str),
        ("path", str),
        ("port", int),
        ("url", str),
        ("details", dict),
        ("fullCloneFlag", bool),
        ("diskProvisioningStrictnessFlag", bool),
        ("isManaged", bool),
        ("parentPoolType", str),
    ],
    # api/.../agent/api/to/NfsTO.java
    data_to.NfsTO: [("_url", str), ("_role", str), ("uuid", str), ("nfsVersion", str)],
    # core/.../agent/api/StartCommand.java, StartAnswer.java
    vm.StartCommand: [
        ("vm", dict),
        ("hostIp", str),
        ("executeInSequence", bool),
        ("secondaryStorage", str),
        *COMMAND,
    ],
    vm.StartAnswer: [("vm", dict), ("hostGuid", str), ("_iqnToData", dict), *ANSWER],
    vm.RebootCommand: REBOOT,
    # core/.../agent/api/RebootAnswer.java
    vm.RebootAnswer: [("vncPort", int), *ANSWER],
    # core/.../agent/api/StopCommand.java (extends RebootCommand)
    vm.StopCommand: [
        ("isProxy", bool),
        ("urlPort", str),
        ("publicConsoleProxyIpAddress", str),
        ("gpuDevice", dict),
        ("checkBeforeCleanup", bool),
        ("controlIp", str),
        ("forceStop", bool),
        ("dpdkInterfaceMapping", dict),
        ("vlanToPersistenceMap", dict),
        ("expungeVM", bool),
        ("volumesToDisconnect", list),
        *REBOOT,
    ],
    # core/.../agent/api/StopAnswer.java (extends RebootAnswer)
    vm.StopAnswer: [("platform", str), ("vncPort", int), *ANSWER],
    # core/.../agent/api/CheckVirtualMachineCommand.java, ...Answer.java
    vm.CheckVirtualMachineCommand: [("vmName", str), *COMMAND],
    vm.CheckVirtualMachineAnswer: [("vncPort", int), ("state", str), *ANSWER],
    # core/.../agent/api/GetVncPortCommand.java, GetVncPortAnswer.java
    vm.GetVncPortCommand: [("id", int), ("name", str), *COMMAND],
    vm.GetVncPortAnswer: [("address", str), ("port", int), *ANSWER],
    # core/.../storage/command/StorageSubSystemCommand.java: no fields of its own
    volumes.StorageSubSystemCommand: COMMAND,
    # core/.../storage/command/CopyCommand.java, CopyCmdAnswer.java
    volumes.CopyCommand: [
        ("srcTO", dict),
        ("destTO", dict),
        ("cacheTO", dict),
        ("executeInSequence", bool),
        ("options", dict),
        ("options2", dict),
        *COMMAND,
    ],
    volumes.CopyCmdAnswer: [("newData", dict), *ANSWER],
    # core/.../storage/command/CreateObjectCommand.java, CreateObjectAnswer.java
    volumes.CreateObjectCommand: [("data", dict), *COMMAND],
    volumes.CreateObjectAnswer: [("data", dict), *ANSWER],
    # core/.../storage/command/DeleteCommand.java
    volumes.DeleteCommand: [("data", dict), *COMMAND],
    # core/.../storage/command/AttachCommand.java, AttachAnswer.java
    volumes.AttachCommand: [
        ("disk", dict),
        ("vmName", str),
        ("inSeq", bool),
        ("forced", bool),
        ("controllerInfo", dict),
        *COMMAND,
    ],
    volumes.AttachAnswer: [("disk", dict), *ANSWER],
    # core/.../storage/command/DettachCommand.java, DettachAnswer.java
    volumes.DettachCommand: [
        ("disk", dict),
        ("vmName", str),
        ("_managed", bool),
        ("_iScsiName", str),
        ("_storageHost", str),
        ("_storagePort", int),
        ("params", dict),
        ("forced", bool),
        ("waitDetachDevice", int),
        *COMMAND,
    ],
    volumes.DettachAnswer: [("disk", dict), *ANSWER],
    # core/.../agent/api/storage/ResizeVolumeCommand.java, ResizeVolumeAnswer.java
    volumes.ResizeVolumeCommand: [
        ("path", str),
        ("pool", dict),
        ("currentSize", int),
        ("newSize", int),
        ("shrinkOk", bool),
        ("vmInstance", str),
        ("chainInfo", str),
        ("managed", bool),
        ("iScsiName", str),
        ("passphrase", list),
        ("encryptFormat", str),
        *COMMAND,
    ],
    volumes.ResizeVolumeAnswer: [("newSize", int), *ANSWER],
}


@pytest.mark.parametrize("cls", list(GOLDEN), ids=lambda c: c.__name__)
def test_fields_match_the_java_class(cls: type) -> None:
    assert_golden(cls, GOLDEN[cls])


def test_every_class_of_the_zone_and_vm_modules_has_a_golden_list() -> None:
    modules = (network, storage, stats, ha, vm, volumes, to, data_to)
    classes = {
        obj
        for module in modules
        for _, obj in inspect.getmembers(module, inspect.isclass)
        if obj.__module__ == module.__name__
        and attrs.has(obj)
        and not issubclass(obj, RawImplementation)
    }
    assert classes - set(GOLDEN) - set(ZONE_GOLDEN) == set()


def test_a_renamed_field_fails_the_golden_comparison() -> None:
    # The check itself can fail: a list with 4.20's name for a 4.21 field does not pass.
    old = [("_details" if n == "details" else n, t) for n, t in GOLDEN[to.DiskTO]]
    with pytest.raises(AssertionError, match=r"missing \['_details'\]"):
        assert_golden(to.DiskTO, old)
    swapped = [GOLDEN[to.DpdkTO][1], GOLDEN[to.DpdkTO][0], GOLDEN[to.DpdkTO][2]]
    with pytest.raises(AssertionError, match="order or JSON types"):
        assert_golden(to.DpdkTO, swapped)
