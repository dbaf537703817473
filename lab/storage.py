"""The lab's shared primary storage: one directory of the machine, the same pool in both hosts.

A CloudStack ``SharedMountPoint`` pool is a path every host of the cluster has mounted from
the same storage (a libvirt ``dir`` pool on it, named by the pool's UUID). In the lab (no
NFS client in this kernel) the storage is ``<workdir>/pool``, bind-mounted at
:data:`SHARED_POOL_PATH` inside each host's mount namespace: a file written on one host is
the same file on the other, at the same path. On the machine itself the mount point is an
empty directory, created by the lab if missing and removed at teardown. The lab's libvirtds
see the path as a cluster filesystem (:mod:`lab.clusterfs`), so live migration of a VM whose
disks are there needs no "unsafe" flag. :data:`LOCAL_IMAGES` is the opposite: a per-host
directory, for disks that are not shared.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Final

import structlog

from lab.netns import LabError

log = structlog.get_logger("lab.storage")

SHARED_POOL_PATH: Final = "/mnt/kvmlab-primary"
# What a lab management server may call the pool and the template it holds (any UUIDs do).
SHARED_POOL_UUID: Final = str(uuid.uuid5(uuid.NAMESPACE_URL, "kvmlab:pool:primary"))
TEMPLATE_UUID: Final = str(uuid.uuid5(uuid.NAMESPACE_URL, "kvmlab:template:bootdisk"))
# Inside each host its own (under the bound /var/lib/libvirt): not shared.
LOCAL_IMAGES: Final = "/var/lib/libvirt/images"
POOL_DIRNAME: Final = "pool"  # in the workdir
_MOUNT_POINT_MARK: Final = "created-shared-pool-mount-point"  # in the workdir


def pool_dir(workdir: Path) -> Path:
    """The machine's directory behind :data:`SHARED_POOL_PATH`."""
    return workdir / POOL_DIRNAME


def prepare_shared_pool(workdir: Path) -> Path:
    """An empty pool directory, and the mount point the hosts bind it on; the directory."""
    directory = pool_dir(workdir)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    mount_point = Path(SHARED_POOL_PATH)
    if not mount_point.is_dir():
        if mount_point.exists() or mount_point.is_symlink():
            raise LabError(
                f"{mount_point} exists and is not a directory: the lab's pool goes there"
            )
        mount_point.mkdir(parents=True)
        (workdir / _MOUNT_POINT_MARK).touch()
    return directory


def remove_shared_pool(workdir: Path) -> None:
    """Remove the pool's contents and, if the lab made it, the machine's mount point (once
    the hosts' namespaces, which held the bind mounts, are gone). Idempotent."""
    shutil.rmtree(pool_dir(workdir), ignore_errors=True)
    mark = workdir / _MOUNT_POINT_MARK
    if mark.exists():
        try:
            Path(SHARED_POOL_PATH).rmdir()  # only if empty: never anything but the lab's
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("lab.pool_mount_point_kept", path=SHARED_POOL_PATH, error=str(exc))
        mark.unlink()


def place_file(workdir: Path, source: Path, name: str) -> str:
    """Copy ``source`` onto the shared pool as ``name``; its path inside the hosts."""
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"bad file name on the pool: {name!r}")
    directory = pool_dir(workdir)
    if not directory.is_dir():
        raise LabError(f"no shared pool at {directory}: build the lab first")
    target = directory / name
    partial = directory / f".{name}.partial"
    shutil.copyfile(source, partial)
    partial.chmod(0o644)
    partial.replace(target)  # atomic: a host never sees half a template
    return f"{SHARED_POOL_PATH}/{name}"
