"""Volumes on file pools: CopyCommand, CreateObjectCommand, DeleteCommand, answered as the
Java agent's storage processor (KVMStorageProcessor) answers them on NFS, SharedMountPoint
and local pools (agent.hypervisor.volumes makes the files).

* CopyCommand, a template on primary -> a volume (cloneVolumeFromBaseTemplate):
  **CopyCmdAnswer** whose ``newData`` is a VolumeObjectTO: ``path`` = the new file's name
  (the volume's uuid), ``size`` = its virtual size, ``format`` = QCOW2. A missing base
  template says ``request template reload``: the MS then copies it to the pool again.
* CopyCommand, a template on NFS secondary storage -> primary (copyTemplateToPrimaryStorage):
  the template's directory mounted as the Java agent mounts it (agent.hypervisor.secondary),
  the file converted to qcow2 in the pool, named by the destination's uuid; the same answer
  class, ``newData`` a TemplateObjectTO (path, size, format) or a VolumeObjectTO when the
  destination is a volume. A missing file is a CopyCmdAnswer too (the Java agent sends a
  PrimaryStorageDownloadAnswer there, which the MS does not expect).
* CreateObjectCommand, a volume: **CreateObjectAnswer** with a VolumeObjectTO (path, size,
  format).
* DeleteCommand, a volume: a plain Answer; ``result=true`` when the volume was not there.

The MS casts CopyCmdAnswer/CreateObjectAnswer and on a failure reads ``details``: every
failure here is that class with ``result=false`` and a text (never a plain Answer, which the
Java agent sends for a combination it does not implement).
"""

from __future__ import annotations

import os
from typing import Protocol

import trio

from agent.config import AgentConfig
from agent.handlers import handler
from agent.hypervisor.secondary import SecondaryError, locate
from agent.hypervisor.volumes import Provisioning, TemplateMissing, VolumeError, Volumes
from protocol.messages.data_to import (
    DataStoreTO,
    DataTO,
    NfsTO,
    PrimaryDataStoreTO,
    TemplateObjectTO,
    VolumeObjectTO,
)
from protocol.messages.enums import (
    DataStoreRole,
    ImageFormat,
    ProvisioningType,
    StoragePoolType,
)
from protocol.messages.volumes import (
    CopyCmdAnswer,
    CopyCommand,
    CreateObjectAnswer,
    CreateObjectCommand,
    DeleteCommand,
)
from protocol.model import Answer, Command, Message

REQUEST_TEMPLATE_RELOAD = "request template reload"  # StorageProcessor.REQUEST_TEMPLATE_RELOAD
FILE_POOLS = (
    StoragePoolType.NETWORK_FILESYSTEM,
    StoragePoolType.SHARED_MOUNT_POINT,
    StoragePoolType.FILESYSTEM,
)
_PROVISIONING = {
    ProvisioningType.THIN: Provisioning.THIN,
    ProvisioningType.SPARSE: Provisioning.SPARSE,
    ProvisioningType.FAT: Provisioning.FAT,
}


class VolumesContext(Protocol):
    @property
    def config(self) -> AgentConfig: ...

    @property
    def volumes(self) -> Volumes: ...


def timeout_of(cmd: Command, config: AgentConfig) -> float:
    """The command's ``wait`` (s) when it has one (the MS's primary.storage.download.wait
    for a copy), else qemuimg.timeout (a clone comes with wait 0)."""
    return float(cmd.wait) if cmd.wait > 0 else config.qemuimg_timeout


def describe(data: DataTO | None) -> str:
    if data is None:
        return "nothing"
    store: DataStoreTO | None = getattr(data, "data_store", None)
    where = type(store).__name__ if store is not None else "no store"
    if isinstance(store, PrimaryDataStoreTO) and store.pool_type is not None:
        where = f"{store.pool_type.value} pool {store.uuid}"
    return f"{type(data).__name__} on {where}"


def primary_store(data: DataTO | None, what: str) -> PrimaryDataStoreTO:
    """The file pool ``data`` is on; VolumeError for any other store."""
    store = getattr(data, "data_store", None)
    if not isinstance(store, PrimaryDataStoreTO):
        raise VolumeError(f"{what}: {describe(data)} is not on primary storage")
    if store.pool_type not in FILE_POOLS:
        served = ", ".join(t.value for t in FILE_POOLS)
        kind = store.pool_type.value if store.pool_type is not None else "no type"
        raise VolumeError(
            f"{what}: storage pool {store.uuid} is of type {kind}, which this agent does not "
            f"serve (it serves {served})"
        )
    return store


def provisioning_of(volume: VolumeObjectTO) -> Provisioning:
    return _PROVISIONING.get(volume.provisioning_type or ProvisioningType.THIN, Provisioning.THIN)


def on_image_store(data: DataTO | None) -> bool:
    store = getattr(data, "data_store", None)
    if isinstance(store, NfsTO):
        return store.role in (DataStoreRole.IMAGE, DataStoreRole.IMAGE_CACHE)
    return store is not None and not isinstance(store, PrimaryDataStoreTO)


@handler(CopyCommand)
async def copy(cmd: CopyCommand, ctx: VolumesContext) -> Message:
    src, dest = cmd.src_to, cmd.dest_to
    if isinstance(src, TemplateObjectTO) and isinstance(dest, VolumeObjectTO):  # noqa: SIM102
        if isinstance(src.data_store, PrimaryDataStoreTO):
            return await clone(src, dest, timeout_of(cmd, ctx.config), ctx.volumes)
    to_primary = isinstance(dest, TemplateObjectTO | VolumeObjectTO)
    if isinstance(src, TemplateObjectTO) and on_image_store(src) and to_primary:
        assert isinstance(dest, TemplateObjectTO | VolumeObjectTO)
        return await from_secondary(src, dest, cmd, ctx)
    return CopyCmdAnswer(
        result=False,
        details=f"copying {describe(src)} to {describe(dest)} is not supported by this agent "
        "(it clones templates on primary storage into volumes and copies templates from "
        "NFS secondary storage to primary storage)",
    )


async def clone(
    template: TemplateObjectTO, volume: VolumeObjectTO, timeout: float, volumes: Volumes
) -> Message:
    try:
        store = primary_store(volume, "cloning a volume")
        made = await volumes.clone(
            store.uuid,
            template.path,
            volume.uuid,
            volume.size,
            provisioning_of(volume),
            timeout=timeout,
        )
    except TemplateMissing as exc:
        return CopyCmdAnswer(result=False, details=f"{exc} ({REQUEST_TEMPLATE_RELOAD})")
    except VolumeError as exc:
        return CopyCmdAnswer(result=False, details=f"Failed to create volume: {exc}")
    new = VolumeObjectTO(path=made.name, size=made.virtual_size, format=ImageFormat.QCOW2)
    return CopyCmdAnswer(result=True, new_data=new)


@handler(CreateObjectCommand)
async def create_object(cmd: CreateObjectCommand, ctx: VolumesContext) -> Message:
    volume = cmd.data
    if not isinstance(volume, VolumeObjectTO):
        return CreateObjectAnswer(
            result=False,
            details=f"creating {describe(volume)} is not supported by this agent "
            "(CreateObjectCommand: volumes only)",
        )
    # No format: the pool's default, qcow2 on file pools (as the Java agent).
    fmt = (volume.format or ImageFormat.QCOW2).value.lower()
    try:
        store = primary_store(volume, "creating a volume")
        made = await ctx.volumes.create(
            store.uuid,
            volume.uuid,
            fmt,
            volume.size,
            provisioning_of(volume),
            timeout=timeout_of(cmd, ctx.config),
        )
    except VolumeError as exc:
        return CreateObjectAnswer(result=False, details=f"Failed to create volume: {exc}")
    new = VolumeObjectTO(path=made.name, size=made.virtual_size, format=ImageFormat(fmt.upper()))
    return CreateObjectAnswer(result=True, data=new)


@handler(DeleteCommand)
async def delete(cmd: DeleteCommand, ctx: VolumesContext) -> Message:
    volume = cmd.data
    if not isinstance(volume, VolumeObjectTO):
        return Answer(
            result=False,
            details=f"deleting {describe(volume)} is not supported by this agent "
            "(DeleteCommand: volumes only)",
        )
    try:
        store = primary_store(volume, "deleting a volume")
        await ctx.volumes.delete(store.uuid, volume.path)
    except VolumeError as exc:
        return Answer(result=False, details=f"Failed to delete volume: {exc}")
    # As the Java agent: a volume that is not there counts as deleted.
    return Answer(result=True)


async def from_secondary(
    template: TemplateObjectTO,
    dest: TemplateObjectTO | VolumeObjectTO,
    cmd: CopyCommand,
    ctx: VolumesContext,
) -> Message:
    image_store = template.data_store
    if not isinstance(image_store, NfsTO):
        return CopyCmdAnswer(
            result=False,
            details=f"unsupported protocol: the template is on a {type(image_store).__name__}; "
            "this agent copies templates from NFS secondary storage only",
        )
    try:
        store = primary_store(dest, "copying a template to primary storage")
        where = locate(image_store.url, template.path)
        async with ctx.volumes.secondary.mounted(where, ctx.config.mount_path) as directory:
            source = await trio.to_thread.run_sync(find_template, directory, where.file_name)
            if source is None:
                return CopyCmdAnswer(
                    result=False,
                    details=f"template {template.path} not found on secondary storage "
                    f"{where.url} (mounted at {directory}): check the template's install "
                    "path on the image store",
                )
            size = dest.size if isinstance(dest, VolumeObjectTO) else None
            made = await ctx.volumes.copy_in(
                source, store.uuid, dest.uuid, size, timeout=timeout_of(cmd, ctx.config)
            )
    except (SecondaryError, VolumeError) as exc:
        return CopyCmdAnswer(result=False, details=f"Failed to copy the template: {exc}")
    except OSError as exc:  # the mounted directory cannot be read
        return CopyCmdAnswer(result=False, details=f"Failed to copy the template: {exc}")
    if isinstance(dest, VolumeObjectTO):
        data: DataTO = VolumeObjectTO(
            path=made.name, size=made.virtual_size, format=ImageFormat.QCOW2
        )
    else:
        data = TemplateObjectTO(path=made.name, size=made.virtual_size, format=ImageFormat.QCOW2)
    return CopyCmdAnswer(result=True, new_data=data)


def find_template(directory: str, name: str | None) -> str | None:
    """The template file in the mounted directory: ``name``, or with no name the first
    ``*.qcow2`` (as the Java agent); None if there is none."""
    if name is not None:
        path = os.path.join(directory, name)
        return path if os.path.isfile(path) else None
    for entry in sorted(os.listdir(directory)):
        if entry.endswith("qcow2") and os.path.isfile(os.path.join(directory, entry)):
            return os.path.join(directory, entry)
    return None
