"""The connect listeners of a 4.21 management server and what they make of each answer.

Sources (CloudStack 4.21.0.0, commit f9513b47bf8c):

* ``engine/orchestration/src/main/java/org/apache/cloudstack/engine/orchestration/
  NetworkOrchestrator.java`` ``processConnect`` (CheckNetworkCommand);
* ``engine/storage/volume/src/main/java/org/apache/cloudstack/storage/datastore/provider/
  DefaultHostListener.java`` ``hostConnect``, ``updateStoragePoolHostVOAndDetails``,
  ``setupPersistentNetwork``, ``hostDisconnected``/``sendDeleteStoragePoolCommand``, reached
  through ``server/.../storage/listener/StoragePoolMonitor.java`` ``processConnect``, which
  turns any exception into ``ConnectionException(true)``;
* ``engine/orchestration/src/main/java/com/cloud/agent/manager/AgentManagerImpl.java``
  ``notifyMonitorsOfConnection`` (ReadyCommand, and what a listener's exception does),
  ``SetHostParamsListener``; ``server/.../network/SshKeysDistriMonitor.java``;
  ``server/.../network/security/SecurityGroupListener.java`` (answers not read);
* ``server/src/main/java/com/cloud/storage/LocalStoragePoolListener.java`` and
  ``StorageManagerImpl.createLocalStorage`` (StartupStorageCommand);
* ``server/src/main/java/com/cloud/ha/AbstractInvestigatorImpl.java`` ``testIpAddress`` and
  ``UserVmDomRInvestigator`` (PingTestCommand).
"""

from __future__ import annotations

from lab.ms_side.verdict import (
    HostEffect,
    MsVerdict,
    class_cast,
    details_of,
    no_answer,
    result_of,
)
from protocol.messages.enums import StorageResourceType
from protocol.messages.host import ReadyAnswer
from protocol.messages.network import CheckNetworkAnswer
from protocol.messages.storage import ModifyStoragePoolAnswer, StartupStorageCommand
from protocol.model import Message

ALERT = HostEffect.ALERT


def check_network(answer: Message | None) -> MsVerdict:
    """NetworkOrchestrator.processConnect: ``(CheckNetworkAnswer) easySend(...)``."""
    if answer is None:  # a null casts fine in Java; the null check comes next
        return no_answer("ConnectionException(setupError=true)", ALERT)
    if not isinstance(answer, CheckNetworkAnswer):
        return MsVerdict(False, class_cast(answer, CheckNetworkAnswer), ALERT)
    if not answer.result:
        return MsVerdict(
            False,
            "alert 'Incorrect Network setup on agent, Reinitialize agent after network names "
            f"are setup, details : {answer.details}' and ConnectionException(true)",
            ALERT,
        )
    if answer.reconnect:
        return MsVerdict(
            False, "'Reinitialize agent after network setup.'", HostEffect.DISCONNECTED
        )
    return MsVerdict(True, "Network setup is correct on Agent")


def modify_storage_pool(answer: Message | None) -> MsVerdict:
    """DefaultHostListener.hostConnect, for each shared pool of the host's cluster/zone.

    The result is checked before the cast: an Unsupported or plain false answer fails on
    the result, a plain true Answer on the cast. Every failure is wrapped by
    StoragePoolMonitor in ConnectionException(true): the host goes to Alert.
    """
    if answer is None:
        return no_answer("'Unable to get an answer to the modify storage pool command'", ALERT)
    if not result_of(answer):
        return MsVerdict(
            False,
            "alert 'Unable to attach storage pool' and 'Unable to establish connection from "
            f"storage head to storage pool ... due to {details_of(answer)}'",
            ALERT,
        )
    if not isinstance(answer, ModifyStoragePoolAnswer):
        return MsVerdict(False, class_cast(answer, ModifyStoragePoolAnswer), ALERT)
    info = answer.pool_info
    if info is None:
        return MsVerdict(False, "NullPointerException: getPoolInfo() is null", ALERT)
    if info.local_path is None:
        return MsVerdict(False, "NullPointerException: poolInfo.localPath is null", ALERT)
    read = {
        "localPath": info.local_path.replace("//", "/"),  # stored in storage_pool_host_ref
        "capacityBytes": info.capacity_bytes,
        "usedBytes": info.capacity_bytes - info.available_bytes,
        "localDatastoreName": answer.local_datastore_name,
        "poolType": answer.pool_type or None,  # stored as detail pool_type when not empty
    }
    return MsVerdict(True, "Connection established between storage pool and host", read=read)


def setup_persistent_network(answer: Message | None) -> MsVerdict:
    """DefaultHostListener.setupPersistentNetwork: at the end of every pool's hostConnect."""
    if answer is None:
        return no_answer("CloudRuntimeException, wrapped by StoragePoolMonitor", ALERT)
    if not result_of(answer):
        return MsVerdict(False, "'Unable to create persistent network resources' is logged")
    return MsVerdict(True, "persistent network set up")


def delete_storage_pool(answer: Message | None) -> MsVerdict:
    """DefaultHostListener.hostDisconnected (a pool no longer expected on the host)."""
    if answer is None:
        return no_answer("CloudRuntimeException; StoragePoolMonitor logs it and goes on")
    if not result_of(answer):
        return MsVerdict(False, "alert 'Unable to detach storage pool'; the host keeps it")
    return MsVerdict(True, "storage_pool_host_ref removed")


def not_read(answer: Message | None) -> MsVerdict:
    """SetHostParamsCommand, ModifySshKeysCommand, CleanupNetworkRulesCmd: sent with a
    listener whose processAnswers ignores them (SecurityGroupListener reads only
    SecurityGroupRuleAnswers)."""
    return MsVerdict(True, "sent asynchronously; the answer is not read")


def ping_test(answer: Message | None) -> MsVerdict:
    """AbstractInvestigatorImpl.testIpAddress: result true = the pinged host is Up."""
    if answer is None:
        return no_answer("the host's status is Unknown")
    if result_of(answer):
        return MsVerdict(True, "host has been successfully pinged", read={"status": "Up"})
    return MsVerdict(False, "cannot be pinged: status Unknown", read={"status": "Unknown"})


READY_DETAILS = ("host.uefi.enable", "host.virtv2v.version", "host.ovftool.version")


def ready(answer: Message | None) -> MsVerdict:
    """AgentManagerImpl.notifyMonitorsOfConnection, after the listeners: the ReadyCommand."""
    if answer is None or not result_of(answer):
        return MsVerdict(
            False,
            "handleDisconnectWithoutInvestigation(AgentDisconnected)",
            ALERT,
        )
    details = answer.details_map if isinstance(answer, ReadyAnswer) else None
    read: dict[str, str] = {}
    if details is not None:
        present = {k: details[k] for k in READY_DETAILS if details.get(k) is not None}
        if present and details.get("host.uefi.enable") is None:
            # uefiEnabled.equals(...) on a null: the exception leaves the connect sequence.
            return MsVerdict(
                False,
                "NullPointerException: detailsMap has host.virtv2v/ovftool but no host.uefi.enable",
                HostEffect.REFUSED,
            )
        read = present
    return MsVerdict(True, "Connecting -> Up", read=read)


def startup_storage(command: StartupStorageCommand) -> MsVerdict:
    """LocalStoragePoolListener.processConnect: a local pool from a StartupStorageCommand."""
    if command.resource_type != StorageResourceType.STORAGE_POOL:
        return MsVerdict(False, "ignored: resourceType is not STORAGE_POOL")
    info = command.pool_info
    if info is None:
        return MsVerdict(False, "ignored: poolInfo is null")
    if info.pool_type is None:
        # StorageManagerImpl.createLocalStorage: pInfo.getPoolType().toString() for a new
        # pool (in a zone with local storage enabled), wrapped in ConnectionException(true).
        return MsVerdict(False, "NullPointerException: poolInfo.poolType is null", ALERT)
    read = {
        "uuid": info.uuid,
        "hostPath": info.host_path,
        "localPath": info.local_path,
        "capacityBytes": info.capacity_bytes,
        "availableBytes": info.available_bytes,
    }
    return MsVerdict(True, "StorageManager.createLocalStorage(host, poolInfo)", read=read)
