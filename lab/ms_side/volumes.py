"""The volume readers of a 4.21 management server (storage subsystem callbacks).

Sources (CloudStack 4.21.0.0):
``engine/storage/volume/src/main/java/org/apache/cloudstack/storage/volume/VolumeObject.java``
(``handleProcessEventAnswer``: ``instanceof CopyCmdAnswer / CreateObjectAnswer``, then a
cast of the data to VolumeObjectTO; ``updateVolumeInfo``);
``.../storage/volume/VolumeServiceImpl.java`` (``createVolumeCallback``,
``createVolumeFromBaseImageCallBack``: on failure ``ans.getDetails().contains(...)``);
``engine/storage/image/src/main/java/org/apache/cloudstack/storage/image/store/
TemplateObject.java`` (``processEvent``: newData cast to TemplateObjectTO);
``plugins/storage/volume/default/src/main/java/org/apache/cloudstack/storage/datastore/driver/
CloudStackPrimaryDataStoreDriverImpl.java`` (``createAsync``, ``deleteAsync``, ``resize``);
``server/src/main/java/com/cloud/storage/VolumeApiServiceImpl.java`` (attach: cast to
AttachAnswer, ``getDisk().getDiskSeq()``; detach: any answer's result).
"""

from __future__ import annotations

from lab.ms_side.verdict import MsVerdict, class_cast, details_of, result_of
from protocol.messages.data_to import TemplateObjectTO, VolumeObjectTO
from protocol.messages.volumes import (
    AttachAnswer,
    CopyCmdAnswer,
    CreateObjectAnswer,
    ResizeVolumeAnswer,
)
from protocol.model import Message

TEMPLATE_RELOAD = "request template reload"  # StorageProcessor.REQUEST_TEMPLATE_RELOAD


def _failed(answer: Message | None, what: str) -> MsVerdict:
    if isinstance(answer, CopyCmdAnswer) and answer.details is None:
        return MsVerdict(False, f"{what} failed; NullPointerException on the null details")
    if answer is None:
        return MsVerdict(False, f"{what} failed: no answer")
    details = details_of(answer)
    if details is not None and TEMPLATE_RELOAD in details:
        return MsVerdict(False, f"{what} failed: template_spool_ref reset, reloaded next time")
    return MsVerdict(False, f"{what} failed: {details}")


def _volume(data: object, what: str) -> MsVerdict:
    if not isinstance(data, VolumeObjectTO):
        name = getattr(data, "java_class", "null")
        return MsVerdict(False, f"{what}: ClassCastException/NPE: {name} -> VolumeObjectTO")
    read = {
        "path": data.path,
        "size": data.size,
        "format": data.format.value if data.format else None,
    }
    if data.path is None:
        return MsVerdict(False, f"{what}: the volume's path is set to null", read=read)
    return MsVerdict(True, f"{what}: volume path, size and format updated", read=read)


def copy_to_volume(answer: Message | None) -> MsVerdict:
    """A clone (template on primary -> volume) or a copy to a volume."""
    if answer is None or not result_of(answer):
        return _failed(answer, "the copy")
    if not isinstance(answer, CopyCmdAnswer):
        return MsVerdict(False, "not a CopyCmdAnswer: the volume is Ready with no path")
    return _volume(answer.new_data, "CopyCmdAnswer")


def copy_template_to_primary(answer: Message | None) -> MsVerdict:
    """TemplateObject.processEvent on primary: template_spool_ref from the new TemplateObjectTO."""
    if answer is None or not result_of(answer):
        return _failed(answer, "the template copy")
    if not isinstance(answer, CopyCmdAnswer):
        return MsVerdict(False, "not a CopyCmdAnswer: the template is DOWNLOADED with no path")
    data = answer.new_data
    if not isinstance(data, TemplateObjectTO):
        name = getattr(data, "java_class", "null")
        return MsVerdict(
            False, f"ClassCastException/NPE {name} -> TemplateObjectTO: 'Failed to process event'"
        )
    read = {"installPath": data.path, "templateSize": data.size}
    if data.path is None:
        return MsVerdict(False, "the template's install path is set to null", read=read)
    return MsVerdict(True, "template_spool_ref DOWNLOADED", read=read)


def create_volume(answer: Message | None) -> MsVerdict:
    """CreateObjectCommand for a volume: createAsync, then the CreateObjectAnswer's data."""
    if answer is None or not result_of(answer):
        return _failed(answer, "the volume creation")
    if not isinstance(answer, CreateObjectAnswer):
        return MsVerdict(False, "not a CreateObjectAnswer: the volume is Ready with no path")
    return _volume(answer.data, "CreateObjectAnswer")


def delete(answer: Message | None) -> MsVerdict:
    """deleteAsync: only an answer with result false fails (a null answer counts as done)."""
    if answer is not None and not result_of(answer):
        return MsVerdict(False, f"delete failed: {details_of(answer)}")
    return MsVerdict(True, "deleted")


def attach(answer: Message | None) -> MsVerdict:
    """sendAttachVolumeCommand: ``(AttachAnswer) _agentMgr.send(...)`` in a try; the cast's
    exception becomes 'Failed to attach volume ... due to: ...'."""
    if answer is not None and not isinstance(answer, AttachAnswer):
        return MsVerdict(False, f"attach failed due to: {class_cast(answer, AttachAnswer)}")
    if answer is None or not answer.result:
        return MsVerdict(False, f"attach failed: {details_of(answer) if answer else 'no answer'}")
    if answer.disk is None:
        return MsVerdict(False, "NullPointerException: AttachAnswer.disk is null")
    return MsVerdict(True, "volume attached", read={"deviceId": answer.disk.disk_seq})


def detach(answer: Message | None) -> MsVerdict:
    """DettachCommand: any answer's result; contextMap datastoreName/volumePath/chainInfo."""
    if answer is None or not result_of(answer):
        return MsVerdict(False, f"detach failed: {details_of(answer) if answer else 'no answer'}")
    return MsVerdict(True, "volume detached")


def resize(answer: Message | None) -> MsVerdict:
    """CloudStackPrimaryDataStoreDriverImpl.resize: ``(ResizeVolumeAnswer)`` in a try; on
    success the volume's size becomes ``newSize``."""
    if answer is not None and not isinstance(answer, ResizeVolumeAnswer):
        return MsVerdict(False, f"resize failed: {class_cast(answer, ResizeVolumeAnswer)}")
    if answer is None or not answer.result:
        return MsVerdict(False, f"resize failed: {details_of(answer) if answer else 'no answer'}")
    read = {"newSize": answer.new_size}
    if answer.new_size <= 0:
        return MsVerdict(False, "the volume's size is set to newSize <= 0", read=read)
    return MsVerdict(True, "volume size updated", read=read)
