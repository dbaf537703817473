"""What a primary storage pool is, in our own types, and its libvirt definition (pure).

CloudStack's Java agent (KVMStoragePoolManager -> LibvirtStorageAdaptor.createStoragePool,
LibvirtStoragePoolDef) names every pool by the pool's uuid (libvirt name = uuid = the pool's
uuid), so that any host of the cluster finds it under the same name:

* NetworkFilesystem: a ``netfs`` pool that libvirt mounts, ``<server>:<export>`` at
  ``<mount.path>/<uuid>`` (``/mnt/<uuid>``), with the pool detail ``nfsmountopts`` (split on
  ``,``, whitespace removed) as ``<fs:mount_opts>``;
* SharedMountPoint (a cluster filesystem mounted at the same path on every host) and
  Filesystem (a local directory, ``local.storage.path``): a ``dir`` pool at that path, which
  must exist already (libvirt would otherwise create an empty local directory in place of a
  missing mount).
"""

from __future__ import annotations

import enum
import posixpath
import re
import xml.etree.ElementTree as ET

from attrs import frozen

FS_NS = "http://libvirt.org/schemas/storagepool/fs/1.0"  # <fs:mount_opts>
DEFAULT_MOUNT_ROOT = "/mnt"  # the Java agent's mount.path
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


class PoolError(Exception):
    """A pool cannot be set up, found or removed; the text says which, where, what to check."""


class PoolKind(enum.Enum):
    """CloudStack's pool types this agent serves (``value``: the StoragePoolType name)."""

    NFS = "NetworkFilesystem"
    SHARED_MOUNT_POINT = "SharedMountPoint"
    LOCAL = "Filesystem"

    @property
    def libvirt_type(self) -> str:
        return "netfs" if self is PoolKind.NFS else "dir"


@frozen
class PoolSpec:
    """A pool as this host should have it. ``target``: the directory holding the pool's files
    here (the mount point of an NFS pool), the same path on every host of the cluster."""

    uuid: str
    kind: PoolKind
    target: str
    source_host: str | None = None  # NFS server
    source_dir: str | None = None  # NFS export
    mount_options: tuple[str, ...] = ()

    @property
    def mount_source(self) -> str | None:
        """What libvirt mounts at ``target`` (``server:/export``), None for a dir pool."""
        if self.kind is not PoolKind.NFS:
            return None
        return f"{self.source_host}:{self.source_dir}"

    def describe(self) -> str:
        where = f"{self.mount_source} at {self.target}" if self.mount_source else self.target
        return f"{self.kind.value} pool {self.uuid} ({where})"


def check_uuid(uuid: str | None) -> str:
    """A pool uuid, as it names the libvirt pool and its mount point: nothing else passes."""
    if not uuid or not _UUID.fullmatch(uuid):
        raise PoolError(f"invalid pool uuid {uuid!r:.60}: expected 8-4-4-4-12 hexadecimal digits")
    return uuid


def _absolute(path: str | None, what: str) -> str:
    if not path or not path.startswith("/") or "\0" in path:
        raise PoolError(f"{what} {path!r:.200} is not an absolute path")
    # libvirt strips trailing slashes off target paths; so does the Java agent, to match.
    return posixpath.normpath(path) if path != "/" else path


def mount_options(raw: str | None) -> tuple[str, ...]:
    """The ``nfsmountopts`` pool detail as the Java agent reads it: whitespace removed, split
    on commas (empty entries, which libvirt would refuse, dropped)."""
    if not raw:
        return ()
    return tuple(opt for opt in re.sub(r"\s", "", raw).split(",") if opt)


def nfs_pool(
    uuid: str,
    server: str | None,
    export: str | None,
    *,
    mount_root: str = DEFAULT_MOUNT_ROOT,
    options: str | None = None,
) -> PoolSpec:
    uuid = check_uuid(uuid)
    if not server or any(c in server for c in "/\0 ") or server.startswith("-"):
        raise PoolError(f"NFS pool {uuid}: invalid server {server!r:.100}")
    root = _absolute(mount_root, "mount.path")
    return PoolSpec(
        uuid=uuid,
        kind=PoolKind.NFS,
        target=posixpath.join(root, uuid),
        source_host=server,
        source_dir=_absolute(export, f"NFS pool {uuid}: export"),
        mount_options=mount_options(options),
    )


def dir_pool(uuid: str, path: str | None, kind: PoolKind) -> PoolSpec:
    """A SharedMountPoint or local (Filesystem) pool at ``path``."""
    if kind is PoolKind.NFS:
        raise ValueError("an NFS pool is built by nfs_pool")
    uuid = check_uuid(uuid)
    return PoolSpec(uuid=uuid, kind=kind, target=_absolute(path, f"{kind.value} pool {uuid}: path"))


def pool_xml(spec: PoolSpec) -> str:
    """The libvirt definition (what LibvirtStoragePoolDef writes, escaped properly)."""
    ET.register_namespace("fs", FS_NS)
    pool = ET.Element("pool", type=spec.kind.libvirt_type)
    ET.SubElement(pool, "name").text = spec.uuid
    ET.SubElement(pool, "uuid").text = spec.uuid
    if spec.kind is PoolKind.NFS:
        source = ET.SubElement(pool, "source")
        ET.SubElement(source, "host", name=spec.source_host or "")
        ET.SubElement(source, "dir", path=spec.source_dir or "")
    target = ET.SubElement(pool, "target")
    ET.SubElement(target, "path").text = spec.target
    if spec.kind is PoolKind.NFS and spec.mount_options:
        opts = ET.SubElement(pool, f"{{{FS_NS}}}mount_opts")
        for option in spec.mount_options:
            ET.SubElement(opts, f"{{{FS_NS}}}option", name=option)
    ET.indent(pool)
    return ET.tostring(pool, encoding="unicode") + "\n"


@frozen
class PoolDefinition:
    """What a libvirt pool definition says (XMLDesc), for comparing with a PoolSpec."""

    libvirt_type: str
    target: str | None
    source_host: str | None
    source_dir: str | None
    mount_options: frozenset[str]

    def differs_from(self, spec: PoolSpec) -> str | None:
        """Why this definition is not ``spec``'s (mount options aside), or None."""
        mine = (spec.kind.libvirt_type, spec.target, spec.source_host, spec.source_dir)
        theirs = (self.libvirt_type, self.target, self.source_host, self.source_dir)
        if mine == theirs:
            return None

        def show(t: tuple[str | None, ...]) -> str:
            kind, target, host, export = t
            return f"{kind} {host}:{export} at {target}" if host else f"{kind} at {target}"

        return f"libvirt has {show(theirs)}, the management server asks for {show(mine)}"


def parse_pool_xml(xml: str) -> PoolDefinition:
    root = ET.fromstring(xml)
    host = root.find("source/host")
    export = root.find("source/dir")
    path = root.findtext("target/path")
    options = {o.get("name", "") for o in root.findall(f"{{{FS_NS}}}mount_opts/{{{FS_NS}}}option")}
    return PoolDefinition(
        libvirt_type=root.get("type", ""),
        target=posixpath.normpath(path) if path else None,
        source_host=host.get("name") if host is not None else None,
        source_dir=posixpath.normpath(export.get("path", "")) if export is not None else None,
        mount_options=frozenset(options),
    )
