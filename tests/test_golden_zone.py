"""Zone messages (network, storage, stats, HA) field by field against CloudStack 4.21.

Each list is written by hand from the Java class named in its comment (paths relative to
CloudStack's source tree at 4.21.0.0, commit f9513b47bf8c); see tests/golden.py for the rules.
"""

from __future__ import annotations

import pytest

from protocol.messages import ha, network, stats, storage
from protocol.messages.host import StartupCommand
from tests.golden import ANSWER, COMMAND, Schema, assert_golden

API = "core/src/main/java/com/cloud/agent/api/"

# core/src/main/java/com/cloud/agent/api/StartupCommand.java
STARTUP: Schema = [
    ("type", str),
    ("dataCenter", str),
    ("pod", str),
    ("cluster", str),
    ("guid", str),
    ("name", str),
    ("id", int),
    ("version", str),
    ("iqn", str),
    ("publicIpAddress", str),
    ("publicNetmask", str),
    ("publicMacAddress", str),
    ("privateIpAddress", str),
    ("privateMacAddress", str),
    ("privateNetmask", str),
    ("storageIpAddress", str),
    ("storageNetmask", str),
    ("storageMacAddress", str),
    ("storageIpAddressDeux", str),
    ("storageMacAddressDeux", str),
    ("storageNetmaskDeux", str),
    ("agentTag", str),
    ("resourceName", str),
    ("gatewayIpAddress", str),
    ("msHostList", str),
    ("connectionTransferred", bool),
    ("arch", str),
    *COMMAND,
]
VM_NAMES: Schema = [("vmNames", list), ("hostGuid", str), ("hostName", str)]

GOLDEN: dict[type, Schema] = {
    # api/src/main/java/com/cloud/network/PhysicalNetworkSetupInfo.java
    network.PhysicalNetworkSetupInfo: [
        ("physicalNetworkId", int),
        ("privateNetworkName", str),
        ("publicNetworkName", str),
        ("guestNetworkName", str),
        ("storageNetworkName", str),
        ("mgmtVlan", str),
    ],
    # core/.../agent/api/CheckNetworkCommand.java, CheckNetworkAnswer.java
    network.CheckNetworkCommand: [("networkInfoList", list), *COMMAND],
    network.CheckNetworkAnswer: [("_reconnect", bool), *ANSWER],
    # core/.../agent/api/PingTestCommand.java
    network.PingTestCommand: [
        ("_computingHostIp", str),
        ("_routerIp", str),
        ("_privateIp", str),
        *COMMAND,
    ],
    # core/.../agent/api/CleanupNetworkRulesCmd.java
    network.CleanupNetworkRulesCmd: [("interval", int), *COMMAND],
    # core/.../agent/api/ModifySshKeysCommand.java
    network.ModifySshKeysCommand: [("_pubKey", str), ("_prvKey", str), *COMMAND],
    # core/.../agent/api/SetHostParamsCommand.java
    network.SetHostParamsCommand: [("params", dict), *COMMAND],
    # core/.../agent/api/SetupPersistentNetworkCommand.java, ...Answer.java
    network.SetupPersistentNetworkCommand: [("nic", dict), *COMMAND],
    network.SetupPersistentNetworkAnswer: ANSWER,
    # api/src/main/java/com/cloud/agent/api/StoragePoolInfo.java
    storage.StoragePoolInfo: [
        ("uuid", str),
        ("host", str),
        ("localPath", str),
        ("hostPath", str),
        ("poolType", str),
        ("capacityBytes", int),
        ("availableBytes", int),
        ("name", str),
        ("details", dict),
    ],
    # api/src/main/java/com/cloud/storage/template/TemplateProp.java
    storage.TemplateProp: [
        ("templateName", str),
        ("installPath", str),
        ("size", int),
        ("physicalSize", int),
        ("id", int),
        ("isPublic", bool),
        ("isCorrupted", bool),
    ],
    # core/.../agent/api/ModifyStoragePoolCommand.java
    storage.ModifyStoragePoolCommand: [
        ("add", bool),
        ("pool", dict),
        ("localPath", str),
        ("storagePath", str),
        ("details", dict),
        *COMMAND,
    ],
    # core/.../agent/api/ModifyStoragePoolAnswer.java
    storage.ModifyStoragePoolAnswer: [
        ("poolInfo", dict),
        ("templateInfo", dict),
        ("localDatastoreName", str),
        ("poolType", str),
        ("datastoreClusterChildren", list),
        *ANSWER,
    ],
    # core/.../agent/api/DeleteStoragePoolCommand.java
    storage.DeleteStoragePoolCommand: [
        ("_pool", dict),
        ("_localPath", str),
        ("_removeDatastore", bool),
        ("_details", dict),
        *COMMAND,
    ],
    # core/.../agent/api/storage/StorageNfsVersionCommand.java
    storage.StorageNfsVersionCommand: [("nfsVersion", str), *COMMAND],
    # core/.../agent/api/GetStorageStatsCommand.java (extends StorageNfsVersionCommand)
    storage.GetStorageStatsCommand: [
        ("id", str),
        ("localPath", str),
        ("pooltype", str),
        ("secUrl", str),
        ("store", dict),
        ("nfsVersion", str),
        *COMMAND,
    ],
    # core/.../agent/api/GetStorageStatsAnswer.java
    storage.GetStorageStatsAnswer: [
        ("usedBytes", int),
        ("capacityBytes", int),
        ("capacityIops", int),
        ("usedIops", int),
        *ANSWER,
    ],
    # core/.../agent/api/StartupStorageCommand.java (extends StartupCommand)
    storage.StartupStorageCommand: [
        ("parent", str),
        ("templateInfo", dict),
        ("totalSize", int),
        ("poolInfo", dict),
        ("resourceType", str),
        ("fsType", str),
        ("hostDetails", dict),
        ("nfsShare", str),
        *STARTUP,
    ],
    # core/.../agent/api/HostStatsEntry.java
    stats.HostStatsEntry: [
        ("hostId", int),
        ("hostVo", dict),
        ("entityType", str),
        ("cpuUtilization", float),
        ("averageLoad", float),
        ("networkReadKBs", float),
        ("networkWriteKBs", float),
        ("totalMemoryKBs", float),
        ("freeMemoryKBs", float),
    ],
    # core/.../agent/api/GetHostStatsCommand.java, GetHostStatsAnswer.java
    stats.GetHostStatsCommand: [("hostGuid", str), ("hostName", str), ("hostId", int), *COMMAND],
    stats.GetHostStatsAnswer: [("hostStats", dict), *ANSWER],
    # core/.../agent/api/VmStatsEntryBase.java
    stats.VmStatsEntryBase: [
        ("vmId", int),
        ("cpuUtilization", float),
        ("networkReadKBs", float),
        ("networkWriteKBs", float),
        ("diskReadIOs", float),
        ("diskWriteIOs", float),
        ("diskReadKBs", float),
        ("diskWriteKBs", float),
        ("memoryKBs", float),
        ("intFreeMemoryKBs", float),
        ("targetMemoryKBs", float),
        ("numCPUs", int),
        ("entityType", str),
    ],
    # core/.../agent/api/GetVmStatsCommand.java, GetVmStatsAnswer.java
    stats.GetVmStatsCommand: [*VM_NAMES, *COMMAND],
    stats.GetVmStatsAnswer: [("vmStatsMap", dict), *ANSWER],
    # core/.../agent/api/VolumeStatsEntry.java
    stats.VolumeStatsEntry: [("volumeUuid", str), ("physicalsize", int), ("virtualSize", int)],
    # core/.../agent/api/GetVolumeStatsCommand.java, GetVolumeStatsAnswer.java
    stats.GetVolumeStatsCommand: [
        ("volumeUuids", list),
        ("poolType", str),
        ("poolUuid", str),
        *COMMAND,
    ],
    stats.GetVolumeStatsAnswer: [
        ("poolUuid", str),
        ("poolType", str),
        ("volumeStats", dict),
        *ANSWER,
    ],
    # core/.../agent/api/VmDiskStatsEntry.java
    stats.VmDiskStatsEntry: [
        ("vmName", str),
        ("path", str),
        ("ioRead", int),
        ("ioWrite", int),
        ("bytesWrite", int),
        ("bytesRead", int),
        ("deltaIoRead", int),
        ("deltaIoWrite", int),
        ("deltaBytesWrite", int),
        ("deltaBytesRead", int),
    ],
    # core/.../agent/api/GetVmDiskStatsCommand.java, GetVmDiskStatsAnswer.java
    stats.GetVmDiskStatsCommand: [*VM_NAMES, *COMMAND],
    stats.GetVmDiskStatsAnswer: [("hostName", str), ("vmDiskStatsMap", dict), *ANSWER],
    # core/.../agent/api/VmNetworkStatsEntry.java
    stats.VmNetworkStatsEntry: [
        ("vmName", str),
        ("macAddress", str),
        ("bytesSent", int),
        ("bytesReceived", int),
    ],
    # core/.../agent/api/GetVmNetworkStatsCommand.java, GetVmNetworkStatsAnswer.java
    stats.GetVmNetworkStatsCommand: [*VM_NAMES, *COMMAND],
    stats.GetVmNetworkStatsAnswer: [("hostName", str), ("vmNetworkStatsMap", dict), *ANSWER],
    # core/.../agent/api/CheckOnHostCommand.java, CheckOnHostAnswer.java
    ha.CheckOnHostCommand: [
        ("host", dict),
        ("reportCheckFailureIfOneStorageIsDown", bool),
        *COMMAND,
    ],
    ha.CheckOnHostAnswer: [("determined", bool), ("alive", bool), *ANSWER],
    # core/.../agent/api/FenceCommand.java, FenceAnswer.java
    ha.FenceCommand: [
        ("vmName", str),
        ("hostGuid", str),
        ("hostIp", str),
        ("inSeq", bool),
        ("host", dict),
        ("reportCheckFailureIfOneStorageIsDown", bool),
        *COMMAND,
    ],
    ha.FenceAnswer: ANSWER,
}
# core/.../agent/api/VmStatsEntry.java (extends VmStatsEntryBase)
GOLDEN[stats.VmStatsEntry] = [("vmUuid", str), *GOLDEN[stats.VmStatsEntryBase]]


@pytest.mark.parametrize("cls", list(GOLDEN), ids=lambda c: c.__name__)
def test_fields_match_the_java_class(cls: type) -> None:
    assert_golden(cls, GOLDEN[cls])


def test_startup_storage_command_is_a_storage_host_type() -> None:
    # StartupStorageCommand's constructors pass Host.Type.Storage; its superclass's default
    # stays Routing for the StartupRoutingCommand.
    assert storage.StartupStorageCommand().type.value == "Storage"
    assert StartupCommand().type.value == "Routing"
