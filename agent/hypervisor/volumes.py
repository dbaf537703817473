"""Volumes on file pools (NFS, SharedMountPoint, local directories), as CloudStack's Java
agent makes them (KVMStorageProcessor, LibvirtStorageAdaptor):

* a volume is a file named by the volume's uuid (no extension) in the pool's directory
  (``/mnt/<pool uuid>`` for NFS, the pool's path for the others), the same path on every
  host of the cluster;
* a clone of a template on the pool is, for THIN provisioning (the default), a qcow2 overlay
  whose backing file is the template's absolute path; SPARSE and FAT make a full copy,
  preallocated (``preallocation=metadata`` / ``full``); the volume's virtual size is the
  larger of the requested size and the template's;
* an empty data volume is ``qemu-img create`` of the requested size and format.

Unlike the Java agent, a volume is written under a hidden temporary name and renamed into
place once complete: a failed or killed qemu-img leaves nothing behind, and no host ever
sees half a volume. An existing file of that name is never overwritten (the Java agent
refuses too on SharedMountPoint pools, where libvirt creates the file). libvirt's pool is
refreshed after each change, so that libvirt lists the volume.
"""

from __future__ import annotations

import enum
import os
import posixpath
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import structlog
import trio
from attrs import frozen

from agent.hypervisor.connection import HypervisorError
from agent.hypervisor.pooldefs import PoolError, check_uuid
from agent.hypervisor.pools import Pools
from agent.hypervisor.qemuimg import ImageInfo, QemuImg, QemuImgError
from agent.hypervisor.secondary import LibvirtMounter, SecondaryStorage

log = structlog.get_logger("agent.volumes")
_T = TypeVar("_T")

__all__ = ["Provisioning", "TemplateMissing", "VolumeError", "VolumeFile", "Volumes"]

FILE_POOL_TYPES = ("dir", "netfs")  # libvirt pool types whose volumes are plain files
FORMATS = ("qcow2", "raw")


class VolumeError(Exception):
    """A volume cannot be made, found or removed; the text says which, where, what to check."""


class TemplateMissing(VolumeError):
    """The base template of a clone is not on the pool (the MS can copy it there again)."""


class Provisioning(enum.Enum):
    """CloudStack's ProvisioningType -> qemu-img's ``preallocation`` (as the Java agent)."""

    THIN = "off"
    SPARSE = "metadata"
    FAT = "full"

    def preallocation(self, fmt: str) -> str:
        # raw has no metadata to preallocate; sparse is what 'off' gives it
        if fmt == "raw" and self is Provisioning.SPARSE:
            return "off"
        return self.value


@frozen
class VolumeFile:
    """A volume as made: its file name on the pool (what the MS stores as the path), its
    path on this host, format and virtual size (bytes)."""

    name: str
    path: str
    format: str
    virtual_size: int


def file_name(path: str | None, directory: str, what: str) -> str:
    """The file name of a volume or template the MS names by ``path`` on the pool at
    ``directory``: a bare name, or an absolute path in that directory (older MSs sent
    ``/mnt/<pool>/<name>``). Nothing that leads out of the pool passes."""
    if not path or "\0" in path:
        raise VolumeError(f"{what}: no file name given")
    if path.startswith("/"):
        parent, name = posixpath.split(posixpath.normpath(path))
        if parent != posixpath.normpath(directory):
            raise VolumeError(f"{what}: {path!r:.200} is not in the pool's directory {directory}")
        path = name
    if "/" in path or path in (".", "..") or path.startswith("."):
        raise VolumeError(f"{what}: invalid file name {path!r:.200} (one name in the pool)")
    return path


class Volumes:
    """Volume files on the pools this host has (agent.hypervisor.pools)."""

    def __init__(
        self,
        pools: Pools,
        qemu_img: QemuImg | None = None,
        secondary: SecondaryStorage | None = None,
    ) -> None:
        self.pools = pools
        self.qemu_img = qemu_img or QemuImg()
        # Templates are copied from secondary storage mounted by libvirt (a test: a seam).
        self.secondary = secondary or SecondaryStorage(LibvirtMounter(pools.hypervisor))
        # Metadata calls (stat, rename, unlink) on a hung NFS mount block: in threads.
        self._fs = trio.CapacityLimiter(4)

    async def _file(self, fn: Callable[[], _T]) -> _T:
        return await trio.to_thread.run_sync(fn, limiter=self._fs)

    async def directory(self, pool_uuid: str | None) -> str:
        """The pool's directory on this host; VolumeError if it is not a file pool here."""
        try:
            uuid = check_uuid(pool_uuid)
            info = await self.pools.info(uuid, refresh=False)
        except (PoolError, HypervisorError) as exc:
            raise VolumeError(f"storage pool {pool_uuid}: {exc}") from None
        if info is None:
            raise VolumeError(
                f"storage pool {uuid} is not set up on this host (libvirt has no pool of that "
                "uuid): check that the host is connected to the pool in CloudStack (the MS "
                "attaches it with ModifyStoragePoolCommand when the host connects)"
            )
        if info.libvirt_type not in FILE_POOL_TYPES or not info.target:
            raise VolumeError(
                f"storage pool {uuid} is a libvirt {info.libvirt_type} pool: this agent "
                "serves volumes on file pools only (NFS, SharedMountPoint, local directories)"
            )
        return info.target

    async def _refresh(self, pool_uuid: str) -> None:
        """libvirt lists what is in the directory only after a refresh."""
        try:
            await self.pools.info(pool_uuid, refresh=True)
        except (PoolError, HypervisorError) as exc:
            log.warning("storage pool refresh failed", pool=pool_uuid, error=str(exc))

    async def _info(self, path: str) -> ImageInfo:
        try:
            return await self.qemu_img.info(path)
        except QemuImgError as exc:
            raise VolumeError(str(exc)) from None

    @asynccontextmanager
    async def _making(self, directory: str, name: str) -> AsyncIterator[str]:
        """A temporary path to write the volume at; renamed to ``name`` if the body
        succeeds, removed otherwise (also on cancellation)."""
        final = posixpath.join(directory, name)
        if await self._file(lambda: os.path.lexists(final)):
            raise VolumeError(
                f"volume {name} already exists at {final}: not overwriting it (delete it "
                "first, or check which volume of CloudStack owns that file)"
            )
        partial = posixpath.join(directory, f".{name}.{secrets.token_hex(4)}.part")
        done = False
        try:
            yield partial
            if await self._file(lambda: os.path.lexists(final)):
                raise VolumeError(f"volume {name} appeared at {final} meanwhile: not replacing")
            try:
                await self._file(lambda: os.rename(partial, final))
            except OSError as exc:
                raise VolumeError(
                    f"volume {name}: cannot put it in place at {final}: {exc}"
                ) from None
            done = True
        finally:
            if not done:
                with trio.CancelScope(shield=True):
                    try:
                        await self._file(lambda: os.unlink(partial))
                    except FileNotFoundError:
                        pass
                    except OSError as exc:
                        log.error("partial volume left behind", path=partial, error=str(exc))

    async def clone(
        self,
        pool_uuid: str | None,
        template: str | None,
        name: str | None,
        size: int | None,
        provisioning: Provisioning,
        *,
        timeout: float,
    ) -> VolumeFile:
        """A volume ``name`` from ``template``, both on the pool (cloneVolumeFromBaseTemplate)."""
        directory = await self.directory(pool_uuid)
        assert pool_uuid is not None
        base_name = file_name(_last_component_of_mnt(template), directory, "base template")
        vol_name = file_name(name, directory, "new volume")
        base = posixpath.join(directory, base_name)
        if not await self._file(lambda: os.path.isfile(base)):
            raise TemplateMissing(
                f"base template {base_name} is not on storage pool {pool_uuid} "
                f"(no file {base}): the management server copies it there again from "
                "secondary storage"
            )
        tmpl = await self._info(base)
        virtual_size = max(size or 0, tmpl.virtual_size)
        path = posixpath.join(directory, vol_name)
        async with self._making(directory, vol_name) as partial:
            try:
                if provisioning is Provisioning.THIN:
                    await self.qemu_img.create(
                        partial,
                        "qcow2",
                        virtual_size,
                        backing=base,
                        backing_format=tmpl.format,
                        preallocation=provisioning.preallocation("qcow2"),
                        timeout=timeout,
                    )
                else:
                    await self.qemu_img.convert(
                        base,
                        tmpl.format,
                        partial,
                        "qcow2",
                        preallocation=provisioning.preallocation("qcow2"),
                        timeout=timeout,
                    )
                    if virtual_size > tmpl.virtual_size:
                        await self.qemu_img.resize(partial, "qcow2", virtual_size, timeout=timeout)
            except QemuImgError as exc:
                raise VolumeError(f"volume {vol_name} from template {base_name}: {exc}") from None
        log.info(
            "volume cloned",
            pool=pool_uuid,
            volume=vol_name,
            template=base_name,
            size=virtual_size,
            provisioning=provisioning.name,
        )
        await self._refresh(pool_uuid)
        return VolumeFile(vol_name, path, "qcow2", virtual_size)

    async def create(
        self,
        pool_uuid: str | None,
        name: str | None,
        fmt: str,
        size: int | None,
        provisioning: Provisioning,
        *,
        timeout: float,
    ) -> VolumeFile:
        """An empty volume (CreateObjectCommand's createVolume)."""
        directory = await self.directory(pool_uuid)
        assert pool_uuid is not None
        vol_name = file_name(name, directory, "new volume")
        if fmt not in FORMATS:
            raise VolumeError(
                f"volume {vol_name}: format {fmt} is not supported on a file pool "
                f"(this agent makes {' and '.join(FORMATS)})"
            )
        if not size or size <= 0:
            raise VolumeError(f"volume {vol_name}: invalid size {size!r} (bytes > 0 expected)")
        async with self._making(directory, vol_name) as partial:
            try:
                await self.qemu_img.create(
                    partial,
                    fmt,
                    size,
                    preallocation=provisioning.preallocation(fmt),
                    timeout=timeout,
                )
            except QemuImgError as exc:
                raise VolumeError(f"volume {vol_name}: {exc}") from None
        log.info("volume created", pool=pool_uuid, volume=vol_name, size=size, format=fmt)
        await self._refresh(pool_uuid)
        return VolumeFile(vol_name, posixpath.join(directory, vol_name), fmt, size)

    async def copy_in(
        self,
        source: str,
        pool_uuid: str | None,
        name: str | None,
        size: int | None,
        *,
        timeout: float,
    ) -> VolumeFile:
        """A full qcow2 copy of the image ``source`` (any file: a template on a mounted
        secondary store) as ``name`` on the pool, grown to ``size`` if larger."""
        directory = await self.directory(pool_uuid)
        assert pool_uuid is not None
        vol_name = file_name(name, directory, "copy")
        image = await self._info(source)
        virtual_size = max(size or 0, image.virtual_size)
        async with self._making(directory, vol_name) as partial:
            try:
                await self.qemu_img.convert(source, image.format, partial, "qcow2", timeout=timeout)
                if virtual_size > image.virtual_size:
                    await self.qemu_img.resize(partial, "qcow2", virtual_size, timeout=timeout)
            except QemuImgError as exc:
                raise VolumeError(f"copying {source} to pool {pool_uuid}: {exc}") from None
        log.info("image copied to the pool", pool=pool_uuid, name=vol_name, source=source)
        await self._refresh(pool_uuid)
        return VolumeFile(vol_name, posixpath.join(directory, vol_name), "qcow2", virtual_size)

    async def delete(self, pool_uuid: str | None, name: str | None) -> bool:
        """Remove the volume's file; False if there was none (nothing to do)."""
        directory = await self.directory(pool_uuid)
        assert pool_uuid is not None
        vol_name = file_name(name, directory, "volume to delete")
        path = posixpath.join(directory, vol_name)
        try:
            users = await self.pools.domains_on(path)
        except HypervisorError as exc:
            raise VolumeError(
                f"volume {path}: cannot tell whether a VM uses it ({exc}); not deleted"
            ) from None
        if users:
            raise VolumeError(
                f"volume {path} is a disk of running VM {', '.join(users)}: not deleted; "
                "stop the VM (or detach the volume) first"
            )
        try:
            await self._file(lambda: os.unlink(path))
        except FileNotFoundError:
            log.info("volume to delete was not there", pool=pool_uuid, volume=vol_name)
            return False
        except IsADirectoryError:
            raise VolumeError(f"volume {path} is a directory: not deleted") from None
        except OSError as exc:
            raise VolumeError(f"volume {path}: cannot delete it: {exc.strerror}") from None
        log.info("volume deleted", pool=pool_uuid, volume=vol_name)
        await self._refresh(pool_uuid)
        return True


def _last_component_of_mnt(path: str | None) -> str | None:
    """The Java agent's upgrade hack: a template path with ``/mnt`` in it is reduced to its
    last component (older MSs stored the full path)."""
    if path and "/mnt" in path:
        return path.rsplit("/", 1)[-1]
    return path
