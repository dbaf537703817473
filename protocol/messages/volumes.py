"""Volumes on primary storage: copy/clone, create, delete, attach, detach, resize (4.21).

Java classes in ``core/src/main/java/org/apache/cloudstack/storage/command/`` (the
StorageSubSystemCommands) and ``core/src/main/java/com/cloud/agent/api/storage/`` (Resize).
They go to any Up host attached to the pool. Answers the MS expects:

* CopyCommand -> **CopyCmdAnswer** whose ``newData`` is a VolumeObjectTO (clone, copy to a
  volume) or a TemplateObjectTO (template to primary); VolumeObject/TemplateObject cast it;
* CreateObjectCommand -> **CreateObjectAnswer** with ``data`` a VolumeObjectTO;
* DeleteCommand -> a plain :class:`~protocol.model.Answer`;
* AttachCommand -> **AttachAnswer** (VolumeApiServiceImpl casts, reads ``disk.diskSeq``);
  DettachCommand -> DettachAnswer (any answer's ``result`` is read);
* ResizeVolumeCommand -> **ResizeVolumeAnswer** (cast, ``newSize`` read).
"""

from __future__ import annotations

from typing import ClassVar

from attrs import frozen

from protocol.messages.data_to import DataTO
from protocol.messages.to import DiskTO, StorageFilerTO
from protocol.model import Answer, Command, jfield

_CMD = "org.apache.cloudstack.storage.command."


@frozen
class StorageSubSystemCommand(Command):
    """The Java superclass of the commands below (no fields); not sent on its own."""

    JAVA_CLASS: ClassVar[str] = _CMD + "StorageSubSystemCommand"


@frozen
class CopyCommand(StorageSubSystemCommand):
    """``wait`` is the copy's time-out (qemu-img); 0 for a clone, which the MS sends so."""

    JAVA_CLASS: ClassVar[str] = _CMD + "CopyCommand"

    src_to: DataTO | None = jfield("srcTO", default=None)
    dest_to: DataTO | None = jfield("destTO", default=None)
    cache_to: DataTO | None = jfield("cacheTO", default=None)
    execute_in_sequence: bool = jfield("executeInSequence", default=False)
    options: dict[str, str] | None = jfield("options", factory=dict)
    options2: dict[str, str] | None = jfield("options2", factory=dict)

    def executes_in_sequence(self) -> bool:
        return self.execute_in_sequence


@frozen
class CopyCmdAnswer(Answer):
    JAVA_CLASS: ClassVar[str] = _CMD + "CopyCmdAnswer"

    new_data: DataTO | None = jfield("newData", default=None)


@frozen
class CreateObjectCommand(StorageSubSystemCommand):
    JAVA_CLASS: ClassVar[str] = _CMD + "CreateObjectCommand"

    data: DataTO | None = jfield("data", default=None)


@frozen
class CreateObjectAnswer(Answer):
    JAVA_CLASS: ClassVar[str] = _CMD + "CreateObjectAnswer"

    data: DataTO | None = jfield("data", default=None)


@frozen
class DeleteCommand(StorageSubSystemCommand):
    JAVA_CLASS: ClassVar[str] = _CMD + "DeleteCommand"

    data: DataTO | None = jfield("data", default=None)


@frozen
class AttachCommand(StorageSubSystemCommand):
    JAVA_CLASS: ClassVar[str] = _CMD + "AttachCommand"

    disk: DiskTO | None = jfield("disk", default=None)
    vm_name: str | None = jfield("vmName", default=None)
    in_seq: bool = jfield("inSeq", default=False)  # not used: executeInSequence() is false
    forced: bool = jfield("forced", default=False)
    controller_info: dict[str, str] | None = jfield("controllerInfo", default=None)


@frozen
class AttachAnswer(Answer):
    JAVA_CLASS: ClassVar[str] = _CMD + "AttachAnswer"

    disk: DiskTO | None = jfield("disk", default=None)  # the command's, echoed


@frozen
class DettachCommand(StorageSubSystemCommand):
    JAVA_CLASS: ClassVar[str] = _CMD + "DettachCommand"  # sic: Dettach

    disk: DiskTO | None = jfield("disk", default=None)
    vm_name: str | None = jfield("vmName", default=None)
    managed: bool = jfield("_managed", default=False)
    iscsi_name: str | None = jfield("_iScsiName", default=None)
    storage_host: str | None = jfield("_storageHost", default=None)
    storage_port: int = jfield("_storagePort", default=0)
    params: dict[str, str] | None = jfield("params", default=None)
    forced: bool = jfield("forced", default=False)
    wait_detach_device: int = jfield("waitDetachDevice", default=0)


@frozen
class DettachAnswer(Answer):
    JAVA_CLASS: ClassVar[str] = _CMD + "DettachAnswer"

    disk: DiskTO | None = jfield("disk", default=None)


@frozen
class ResizeVolumeCommand(Command):
    JAVA_CLASS: ClassVar[str] = "com.cloud.agent.api.storage.ResizeVolumeCommand"

    path: str | None = jfield("path", default=None)  # the volume's file name
    pool: StorageFilerTO | None = jfield("pool", default=None)
    current_size: int | None = jfield("currentSize", default=None)  # bytes
    new_size: int | None = jfield("newSize", default=None)  # bytes
    shrink_ok: bool = jfield("shrinkOk", default=False)
    vm_instance: str | None = jfield("vmInstance", default=None)
    chain_info: str | None = jfield("chainInfo", default=None)
    managed: bool = jfield("managed", default=False)
    iscsi_name: str | None = jfield("iScsiName", default=None)
    passphrase: list[int] | None = jfield("passphrase", default=None, secret=True)
    encrypt_format: str | None = jfield("encryptFormat", default=None)


@frozen
class ResizeVolumeAnswer(Answer):
    JAVA_CLASS: ClassVar[str] = "com.cloud.agent.api.storage.ResizeVolumeAnswer"

    new_size: int = jfield("newSize", default=0)  # bytes, as re-read after the resize
