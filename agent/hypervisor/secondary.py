"""Secondary storage (NFS image stores), mounted where CloudStack's Java agent mounts it.

For a template on secondary storage (KVMStorageProcessor.copyTemplateToPrimaryStorage,
KVMStoragePoolManager.getStoragePoolByURI, LibvirtStorageAdaptor.createNetfsStoragePool):

* the template's URL is the store's ``nfs://<host>/<export>`` + ``/`` + the template's path;
  the **template's directory** is mounted (not the store's root), the last component is the
  file (none when the URL ends in ``/``: the first ``*.qcow2`` there is taken);
* the mount is named by Java's ``UUID.nameUUIDFromBytes(host + path)`` (``//`` collapsed in
  the path) and lives at ``<mount.path>/<that uuid>`` (``/mnt/<uuid>``);
* libvirt mounts it: a **transient** ``netfs`` pool of that name (no format, no mount
  options), destroyed (unmounted) when the last user releases it. A stale mount left at
  the mount point is lazily unmounted first (``umount -l``), as the Java agent does.

:class:`LibvirtMounter` does that; :class:`SecondaryStorage` counts the users of a mount.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import uuid as uuidlib
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol
from urllib.parse import urlsplit

import libvirt
import structlog
import trio
from attrs import frozen

from agent.hypervisor.connection import Hypervisor, HypervisorError

log = structlog.get_logger("agent.secondary")

__all__ = [
    "LibvirtMounter",
    "Mounter",
    "SecondaryError",
    "SecondaryLocation",
    "SecondaryStorage",
    "locate",
    "name_uuid_from_bytes",
    "secondary_pool_xml",
]

SCHEMES = ("nfs", "networkfilesystem", "filesystem")  # getStoragePoolByURI's
UMOUNT_TIMEOUT = 30.0  # s: a lazy unmount detaches at once


class SecondaryError(Exception):
    """A secondary store cannot be named, mounted or read; the text says what to check."""


def name_uuid_from_bytes(data: bytes) -> str:
    """Java's ``UUID.nameUUIDFromBytes``: an MD5 (version 3) UUID with no namespace."""
    digest = bytearray(hashlib.md5(data).digest())  # an identifier, not security
    digest[6] = (digest[6] & 0x0F) | 0x30
    digest[8] = (digest[8] & 0x3F) | 0x80
    return str(uuidlib.UUID(bytes=bytes(digest)))


@frozen
class SecondaryLocation:
    """A template's directory on secondary storage, and the file in it."""

    host: str
    export: str  # the directory mounted: the template's own
    file_name: str | None
    uuid: str  # the mount's (and libvirt pool's) name

    @property
    def url(self) -> str:
        return f"nfs://{self.host}{self.export}"

    def target(self, mount_root: str) -> str:
        return posixpath.join(mount_root, self.uuid)


def _java_host(netloc: str) -> str:
    """``URI.getHost()``: the netloc without user info and port (IPv6 keeps its brackets)."""
    host = netloc.rsplit("@", 1)[-1]
    if host.startswith("["):
        return host[: host.index("]") + 1] if "]" in host else host
    return host.split(":", 1)[0]


def locate(store_url: str | None, template_path: str | None) -> SecondaryLocation:
    """Where the Java agent mounts a template of the store at ``store_url``."""
    if not store_url or not template_path:
        raise SecondaryError(
            f"no template to copy: image store URL {store_url!r:.200}, "
            f"template path {template_path!r:.200}"
        )
    full = f"{store_url}/{template_path}"
    mount_url, _, name = full.rpartition("/")
    parts = urlsplit(mount_url)
    if parts.scheme.lower() not in SCHEMES:
        raise SecondaryError(
            f"image store {store_url!r:.200} is not NFS: this agent copies templates from "
            "NFS secondary storage (nfs://<server>/<export>)"
        )
    host = _java_host(parts.netloc)
    path = parts.path.replace("//", "/")
    if not host or not path.startswith("/") or "\0" in path:
        raise SecondaryError(f"image store URL {mount_url!r:.200}: no server or export path")
    if name in (".", ".."):
        raise SecondaryError(f"template path {template_path!r:.200}: no file name")
    return SecondaryLocation(
        host=host,
        export=path,
        file_name=name or None,
        uuid=name_uuid_from_bytes((host + path).encode()),
    )


def secondary_pool_xml(location: SecondaryLocation, mount_root: str) -> str:
    """The transient netfs pool libvirt mounts (LibvirtStoragePoolDef for a secondary
    store: no format, no mount options)."""
    pool = ET.Element("pool", type="netfs")
    ET.SubElement(pool, "name").text = location.uuid
    ET.SubElement(pool, "uuid").text = location.uuid
    source = ET.SubElement(pool, "source")
    ET.SubElement(source, "host", name=location.host.strip("[]"))
    ET.SubElement(source, "dir", path=location.export)
    target = ET.SubElement(pool, "target")
    ET.SubElement(target, "path").text = location.target(mount_root)
    ET.indent(pool)
    return ET.tostring(pool, encoding="unicode") + "\n"


class Mounter(Protocol):
    """Mounts a secondary store's directory; the local directory it is at."""

    async def mount(self, location: SecondaryLocation, mount_root: str) -> str: ...

    async def unmount(self, location: SecondaryLocation) -> None: ...


class LibvirtMounter:
    """Mounts through libvirt (a transient netfs pool), on a lane and a connection of its
    own: a dead NFS server hangs a mount, and must not hold other libvirt calls."""

    def __init__(self, hypervisor: Hypervisor) -> None:
        self._lane = hypervisor.lane(1, own_connection=True)

    async def mount(self, location: SecondaryLocation, mount_root: str) -> str:
        target = location.target(mount_root)
        await trio.to_thread.run_sync(lambda: os.makedirs(target, exist_ok=True))
        if await trio.to_thread.run_sync(os.path.ismount, target):
            log.warning("stale mount at the secondary mount point: unmounting it", path=target)
            with trio.move_on_after(UMOUNT_TIMEOUT):
                await trio.run_process(["umount", "-l", target], check=False, deliver_cancel=_kill)
        xml = secondary_pool_xml(location, mount_root)
        try:
            await self._lane.call(lambda conn: _start(conn, location.uuid, xml, target))
        except HypervisorError as exc:
            raise SecondaryError(
                f"cannot mount secondary storage {location.host}:{location.export} at "
                f"{target}: {exc}; check that it is exported to this host and that the NFS "
                "client (mount.nfs) is installed"
            ) from None
        log.info("secondary storage mounted", source=location.url, path=target)
        return target

    async def unmount(self, location: SecondaryLocation) -> None:
        try:
            await self._lane.call(lambda conn: _stop(conn, location.uuid))
        except HypervisorError as exc:
            log.warning("secondary storage not unmounted", pool=location.uuid, error=str(exc))


async def _kill(process: trio.Process) -> None:
    process.kill()


# --- in worker threads ------------------------------------------------------------------


def _start(conn: Any, name: str, xml: str, target: str) -> None:
    try:
        old = conn.storagePoolLookupByName(name)
    except libvirt.libvirtError:
        old = None
    if old is not None:  # left by an earlier run: set it up afresh
        if old.isActive():
            old.destroy()
        if old.isPersistent():
            old.undefine()
    pool = conn.storagePoolCreateXML(xml, 0)
    # libvirt's test driver mounts nothing (unit tests)
    if conn.getType().upper() != "TEST" and not os.path.ismount(target):
        pool.destroy()
        raise libvirt.libvirtError(f"libvirt started the pool but nothing is mounted at {target}")


def _stop(conn: Any, name: str) -> None:
    try:
        pool = conn.storagePoolLookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
            return
        raise
    if pool.isActive():
        pool.destroy()  # libvirt unmounts; a transient pool is then gone


class SecondaryStorage:
    """The mounts of secondary stores in use, counted: the last user unmounts."""

    def __init__(self, mounter: Mounter) -> None:
        self.mounter = mounter
        self._users: dict[str, int] = {}
        self._dirs: dict[str, str] = {}
        self._locks: dict[str, trio.Lock] = {}

    @asynccontextmanager
    async def mounted(self, location: SecondaryLocation, mount_root: str) -> AsyncIterator[str]:
        """The local directory of ``location``'s export while the block runs."""
        lock = self._locks.setdefault(location.uuid, trio.Lock())
        async with lock:
            if self._users.get(location.uuid, 0) == 0:
                self._dirs[location.uuid] = await self.mounter.mount(location, mount_root)
            directory = self._dirs[location.uuid]
            self._users[location.uuid] = self._users.get(location.uuid, 0) + 1
        try:
            yield directory
        finally:
            with trio.CancelScope(shield=True):
                async with lock:
                    self._users[location.uuid] -= 1
                    if self._users[location.uuid] == 0:
                        del self._users[location.uuid], self._dirs[location.uuid]
                        await self.mounter.unmount(location)
