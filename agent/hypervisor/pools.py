"""libvirt storage pools: set up, look at and remove CloudStack's primary pools on this host.

The functions below ``# --- in worker threads`` run on an open connection
(``Hypervisor.call``); :class:`Pools` is the service the handlers, the startup (local
storage) and the heartbeat use. What leaves this module is ours: PoolSpec/PoolInfo/PoolError.

As the Java agent (LibvirtStorageAdaptor.createStoragePool), for a pool the MS attaches:

* a pool of that uuid that is running is reused (an NFS pool whose mount options changed is
  stopped and set up again); one that is defined but stopped is undefined and set up afresh;
* another pool using the same target path (say libvirt's ``default`` at
  /var/lib/libvirt/images for a local pool there) is stopped and undefined first: libvirt
  refuses two pools on one path, and no volume is touched by that;
* the pool is defined (persistent, no autostart: the MS attaches it again at every connect)
  and started; an NFS pool must then be mounted (``mountpoint -q`` in the Java agent).

Unlike the Java agent, a pool of that uuid whose definition differs (another path, another
server) is refused rather than reused: VM disks would land in the wrong place.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from typing import Any, Protocol

import libvirt
import structlog
import trio
from attrs import frozen

from agent.hypervisor.connection import Hypervisor
from agent.hypervisor.pooldefs import (
    PoolDefinition,
    PoolError,
    PoolKind,
    PoolSpec,
    parse_pool_xml,
    pool_xml,
)

log = structlog.get_logger("agent.pools")

__all__ = ["PoolError", "PoolInfo", "PoolKind", "PoolSpec", "PoolWatcher", "Pools"]


@frozen
class PoolInfo:
    """A libvirt pool as it is now (sizes in bytes, as libvirt's virStoragePoolGetInfo)."""

    uuid: str
    name: str
    libvirt_type: str
    target: str | None
    active: bool
    capacity: int
    allocation: int  # used
    available: int


class PoolWatcher(Protocol):
    """Told when the MS attaches or detaches a pool (the HA heartbeat follows them)."""

    def pool_added(self, spec: PoolSpec) -> None: ...

    def pool_removed(self, uuid: str) -> None: ...


class Pools:
    """The pools of this host, through libvirt worker threads of their own.

    ``attached``: the pools set up through :meth:`add` since the agent started (what the MS
    attached), by uuid. Calls on one pool are serialised (the MS may attach a pool twice at
    once: at connect and from a volume operation).

    Pool calls run on a lane of their own: a dead NFS server hangs them (a refresh, an
    unmount), and they must not take the threads the agent's other libvirt calls use.
    Fencing has a lane of its own too, which hung pool calls cannot starve.
    """

    def __init__(self, hypervisor: Hypervisor) -> None:
        self.hypervisor = hypervisor
        self.watchers: list[PoolWatcher] = []
        self.attached: dict[str, PoolSpec] = {}
        self._locks: dict[str, trio.Lock] = {}
        # A pool's start mounts NFS, which can hang: a connection of its own per call.
        self._storage = hypervisor.lane(2, own_connection=True)
        self._fencing = hypervisor.lane(2)

    def _lock(self, uuid: str) -> trio.Lock:
        return self._locks.setdefault(uuid, trio.Lock())

    async def add(self, spec: PoolSpec) -> PoolInfo:
        """Set ``spec`` up (idempotent); its sizes. PoolError or HypervisorError."""
        async with self._lock(spec.uuid):
            info = await self._storage.call(lambda conn: ensure_pool(conn, spec))
            self.attached[spec.uuid] = spec
        log.info(
            "storage pool ready",
            pool=spec.uuid,
            kind=spec.kind.value,
            target=spec.target,
            source=spec.mount_source,
            capacity=info.capacity,
            available=info.available,
        )
        for watcher in self.watchers:
            watcher.pool_added(spec)
        return info

    async def remove(self, uuid: str) -> bool:
        """Stop and undefine the pool; False if libvirt had no such pool (nothing to do)."""
        async with self._lock(uuid):
            # The heartbeat stops first: writes to a pool being unmounted are no failure.
            for watcher in self.watchers:
                watcher.pool_removed(uuid)
            spec = self.attached.pop(uuid, None)
            try:
                found = await self._storage.call(lambda conn: remove_pool(conn, uuid))
            except BaseException:
                if spec is not None:  # still there (in use): so is its heartbeat
                    self.attached[uuid] = spec
                    for watcher in self.watchers:
                        watcher.pool_added(spec)
                raise
        log.info("storage pool removed" if found else "storage pool was not defined", pool=uuid)
        return found

    async def info(self, uuid: str, *, refresh: bool = True) -> PoolInfo | None:
        """The pool's sizes (re-read from the storage with ``refresh``), starting it if it
        is defined but stopped; None if libvirt has no such pool."""
        async with self._lock(uuid):
            return await self._storage.call(lambda conn: read_pool(conn, uuid, refresh=refresh))

    async def domains_on(self, directory: str, uuid: str | None = None) -> list[str]:
        """Running (or paused) domains with a disk under ``directory`` (or in pool ``uuid``)."""
        return await self._fencing.call(lambda conn: domains_on(conn, directory, uuid))

    async def destroy_domain(self, name: str) -> None:
        """Stop ``name`` at once (virDomainDestroy: SIGTERM, then SIGKILL)."""
        await self._fencing.call(lambda conn: destroy_domain(conn, name))


# --- in worker threads ------------------------------------------------------------------


def _lookup(conn: Any, uuid: str) -> Any | None:
    try:
        return conn.storagePoolLookupByUUIDString(uuid)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
            return None
        raise


def _definition(pool: Any) -> PoolDefinition:
    return parse_pool_xml(pool.XMLDesc(0))


def _info(pool: Any) -> PoolInfo:
    state, capacity, allocation, available = pool.info()
    definition = _definition(pool)
    return PoolInfo(
        uuid=pool.UUIDString(),
        name=pool.name(),
        libvirt_type=definition.libvirt_type,
        target=definition.target,
        active=state == libvirt.VIR_STORAGE_POOL_RUNNING,
        capacity=int(capacity),
        allocation=int(allocation),
        available=int(available),
    )


def _drop(pool: Any) -> None:
    """Stop (if running) and undefine (if persistent) a pool; its volumes are not touched."""
    if pool.isActive():
        pool.destroy()
    if pool.isPersistent():
        pool.undefine()


def _fails(what: str, exc: libvirt.libvirtError, check: str) -> PoolError:
    return PoolError(f"{what}: {exc.get_error_message() or exc}; {check}")


def ensure_pool(conn: Any, spec: PoolSpec) -> PoolInfo:
    pool = _lookup(conn, spec.uuid)
    if pool is not None:
        why = _definition(pool).differs_from(spec)
        if why is not None:
            raise PoolError(
                f"{spec.describe()}: a libvirt pool of that uuid exists with another "
                f"definition ({why}); remove it (virsh pool-destroy {spec.uuid}; "
                f"virsh pool-undefine {spec.uuid}) or fix the pool in CloudStack"
            )
        if not pool.isActive():
            log.info("storage pool defined but not running: defining it afresh", pool=spec.uuid)
            _drop(pool)
            pool = None
        elif not _mounted(conn, spec):
            log.warning("NFS pool running but not mounted: setting it up again", pool=spec.uuid)
            _drop(pool)
            pool = None
        elif _definition(pool).mount_options != frozenset(spec.mount_options):
            pool = _remount(pool, spec)
    if pool is None:
        _free_target(conn, spec)
        pool = _create(conn, spec)
    if not _mounted(conn, spec):
        _drop(pool)
        raise PoolError(
            f"{spec.describe()}: libvirt started the pool but nothing is mounted at "
            f"{spec.target}; check the NFS server and this host's NFS client (mount.nfs)"
        )
    return _info(pool)


def _mounted(conn: Any, spec: PoolSpec) -> bool:
    """Whether an NFS pool's mount is there (``mountpoint -q`` in the Java agent). libvirt's
    test driver mounts nothing (unit tests)."""
    if spec.kind is not PoolKind.NFS or conn.getType().upper() == "TEST":
        return True
    return os.path.ismount(spec.target)


def _remount(pool: Any, spec: PoolSpec) -> Any | None:
    """New NFS mount options apply only at mount time: stop the pool to set it up again. A
    pool in use cannot be unmounted; it then keeps its old options (as the Java agent)."""
    try:
        _drop(pool)
    except libvirt.libvirtError as exc:
        log.warning(
            "NFS mount options changed but the pool cannot be remounted (in use?); "
            "keeping the current mount",
            pool=spec.uuid,
            error=exc.get_error_message(),
        )
        return pool
    log.info("NFS mount options changed: mounting the pool again", pool=spec.uuid)
    return None


def _free_target(conn: Any, spec: PoolSpec) -> None:
    for other in conn.listAllStoragePools(0):
        if other.UUIDString() == spec.uuid or _definition(other).target != spec.target:
            continue
        log.warning(
            "another libvirt pool uses the pool's path: removing it from libvirt (its files stay)",
            pool=spec.uuid,
            other=other.name(),
            path=spec.target,
        )
        try:
            _drop(other)
        except libvirt.libvirtError as exc:
            raise _fails(
                f"{spec.describe()}: libvirt pool {other.name()} uses {spec.target} and "
                "cannot be removed",
                exc,
                "remove it by hand (virsh pool-destroy / pool-undefine)",
            ) from None


def _create(conn: Any, spec: PoolSpec) -> Any:
    if spec.kind is not PoolKind.NFS and not os.path.isdir(spec.target):
        where = (
            "mount the shared filesystem there on every host of the cluster"
            if spec.kind is PoolKind.SHARED_MOUNT_POINT
            else "create it, or fix local.storage.path"
        )
        raise PoolError(
            f"{spec.describe()}: {spec.target} is not a directory on this host; {where}"
        )
    try:
        pool = conn.storagePoolDefineXML(pool_xml(spec), 0)
    except libvirt.libvirtError as exc:
        raise _fails(
            f"{spec.describe()}: libvirt refused the definition", exc, "see libvirtd's log"
        ) from None
    try:
        if spec.kind is PoolKind.NFS:
            pool.build(0)  # creates the mount point; formats nothing
        pool.create(0)
    except libvirt.libvirtError as exc:
        try:  # leave no half-made pool behind, nor the mount point build() made
            if spec.kind is PoolKind.NFS and not pool.isActive():
                pool.delete(0)
            _drop(pool)
        except libvirt.libvirtError:
            pass
        check = (
            f"check that {spec.mount_source} is exported to this host and that the NFS "
            "client (mount.nfs) is installed"
            if spec.kind is PoolKind.NFS
            else "see libvirtd's log"
        )
        raise _fails(f"{spec.describe()}: libvirt could not start the pool", exc, check) from None
    return pool


def remove_pool(conn: Any, uuid: str) -> bool:
    pool = _lookup(conn, uuid)
    if pool is None:
        return False
    try:
        _drop(pool)
    except libvirt.libvirtError as exc:
        target = _definition(pool).target
        raise _fails(
            f"storage pool {uuid}: libvirt could not stop it",
            exc,
            f"is {target} still in use (VM disks, a shell)?",
        ) from None
    return True


def read_pool(conn: Any, uuid: str, *, refresh: bool) -> PoolInfo | None:
    pool = _lookup(conn, uuid)
    if pool is None:
        return None
    if not pool.isActive():
        log.warning("storage pool not running: starting it", pool=uuid)
        pool.create(0)
    if refresh:
        pool.refresh(0)
    return _info(pool)


def _under(path: str, directory: str) -> bool:
    directory = directory.rstrip("/") or "/"
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def disks_of(domain_xml: str) -> Iterable[tuple[str | None, str | None]]:
    """(path, pool uuid) of each disk (not cdrom/floppy) of a domain definition."""
    root = ET.fromstring(domain_xml)
    for disk in root.findall("devices/disk"):
        if disk.get("device", "disk") not in ("disk", "lun"):
            continue
        source = disk.find("source")
        if source is None:
            continue
        path = source.get("file") or source.get("dir") or source.get("dev")
        yield path, source.get("pool")


def domains_on(conn: Any, directory: str, uuid: str | None) -> list[str]:
    found = []
    for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
        try:
            xml = dom.XMLDesc(0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                continue  # stopped meanwhile
            raise
        for path, pool in disks_of(xml):
            if (path is not None and _under(path, directory)) or (uuid and pool == uuid):
                found.append(dom.name())
                break
    return found


def destroy_domain(conn: Any, name: str) -> None:
    try:
        conn.lookupByName(name).destroy()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
            return  # gone, or no longer running
        raise
