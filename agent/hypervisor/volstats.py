"""Volume sizes for GetVolumeStatsCommand, found as the Java agent finds them (4.21
``LibvirtGetVolumeStatsCommandWrapper`` -> ``KVMStoragePoolManager.getStoragePool`` ->
``LibvirtStoragePool.getPhysicalDisk``).

The pool is libvirt's pool of that UUID (started if it is not running). Each volume is the
pool's volume of that name (the MS sends the volume's path, a file name in the pool; of a
longer path the last component counts); one the pool does not list is looked up again after
a refresh of the pool (a volume created by another host of the cluster). Its physical size
is libvirt's allocation (bytes the file takes), its virtual size libvirt's capacity (what the
guest sees: a qcow2's virtual size). In a directory or NFS pool, a file libvirt still does
not list is measured directly, its length serving for both sizes (the Java agent's
fallback). A pool libvirt does not know is looked for where the Java agent mounts NFS pools,
``/mnt/<pool uuid>``. One volume not found fails the whole answer, as in the Java agent.

:func:`volume_sizes` runs in a worker thread on an open connection (``Hypervisor.call``).
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import libvirt
from attrs import frozen

NFS_MOUNT_ROOT = Path("/mnt")  # the Java agent mounts an NFS pool at /mnt/<pool uuid>
_FILE_POOLS = ("dir", "netfs", "fs")  # where a volume is a file in the pool's directory


class VolumeStatsError(Exception):
    """A pool or a volume the MS named could not be found or read; says which and where."""


@frozen
class VolumeSize:
    physical: int  # bytes the volume takes on the storage
    virtual: int  # bytes the guest sees


def volume_name(path: str) -> str:
    """LibvirtStoragePool.getPhysicalDisk: of ``a/b/c`` the volume is ``c``."""
    name = path.rsplit("/", 1)[-1]
    if name in ("", ".", ".."):
        raise VolumeStatsError(f"{path!r:.200} does not name a volume (expected a file name)")
    return name


def _pool(conn: Any, pool_uuid: str) -> Any | None:
    try:
        return conn.storagePoolLookupByUUIDString(pool_uuid)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() in (libvirt.VIR_ERR_NO_STORAGE_POOL, libvirt.VIR_ERR_INVALID_ARG):
            return None
        raise


def _file_size(path: Path) -> VolumeSize | None:
    try:
        length = path.stat().st_size
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise VolumeStatsError(f"cannot read {path}: {exc.strerror}") from None
    return VolumeSize(length, length)


def _pool_volume(pool: Any, name: str) -> VolumeSize | None:
    def lookup() -> Any | None:
        try:
            return pool.storageVolLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                return None
            raise

    vol = lookup()
    if vol is None:
        pool.refresh(0)
        vol = lookup()
    if vol is None:
        return None
    _type, capacity, allocation = vol.info()
    return VolumeSize(physical=int(allocation), virtual=int(capacity))


def volume_sizes(conn: Any, pool_uuid: str, paths: Sequence[str]) -> dict[str, VolumeSize]:
    """Sizes keyed by the paths as given; VolumeStatsError for the first one not found."""
    pool = _pool(conn, pool_uuid)
    if pool is None:
        return _sizes_outside_libvirt(pool_uuid, paths)
    if not pool.isActive():
        pool.create(0)  # as the Java agent: a stopped pool is started
    root = ET.fromstring(pool.XMLDesc(0))
    pool_type = root.get("type", "")
    target = root.findtext("./target/path") or ""
    where = f"storage pool {pool_uuid} (libvirt {pool_type} pool {pool.name()!r} at {target})"
    out: dict[str, VolumeSize] = {}
    for path in paths:
        name = volume_name(path)
        size = _pool_volume(pool, name)
        if size is None and pool_type in _FILE_POOLS and target:
            size = _file_size(Path(target) / name)
        if size is None:
            raise VolumeStatsError(
                f"volume {name!r} not found in {where}, even after a refresh: "
                "check that the volume exists on the primary storage"
            )
        out[path] = size
    return out


def _sizes_outside_libvirt(pool_uuid: str, paths: Sequence[str]) -> dict[str, VolumeSize]:
    try:
        uuid.UUID(pool_uuid)
    except ValueError:
        raise VolumeStatsError(f"{pool_uuid!r:.80} is not a storage pool UUID") from None
    mount_point = NFS_MOUNT_ROOT / pool_uuid
    if not mount_point.is_dir():
        raise VolumeStatsError(
            f"libvirt has no storage pool {pool_uuid}, and {mount_point} does not exist: "
            "check that the pool was added to this host (ModifyStoragePoolCommand)"
        )
    out: dict[str, VolumeSize] = {}
    for path in paths:
        name = volume_name(path)
        size = _file_size(mount_point / name)
        if size is None:
            raise VolumeStatsError(
                f"libvirt has no storage pool {pool_uuid}, and {mount_point / name} does "
                "not exist: check that the pool was added to this host and holds the volume"
            )
        out[path] = size
    return out
