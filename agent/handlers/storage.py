"""Primary storage pools: attach (ModifyStoragePool), detach (DeleteStoragePool), capacity
(GetStorageStats), answered as the Java agent's wrappers answer them.

* ModifyStoragePoolCommand, add: the libvirt pool (agent.hypervisor.pools), then a
  **ModifyStoragePoolAnswer** whose ``poolInfo`` is what ModifyStoragePoolAnswer's Java
  constructor builds: host and path of the command's pool, its ``localPath``, its type, and
  capacity/available bytes from libvirt; ``templateInfo`` empty. The MS casts to that class
  and stores ``poolInfo.localPath``: a failure is a plain ``result=false`` answer (the host
  goes to Alert, as with the Java agent).
* ModifyStoragePoolCommand, remove; DeleteStoragePoolCommand: stop and undefine the pool.
* GetStorageStatsCommand: **GetStorageStatsAnswer**, capacity and allocation after a refresh.
"""

from __future__ import annotations

from typing import Protocol

from agent.config import AgentConfig
from agent.handlers import handler
from agent.hypervisor.connection import HypervisorError
from agent.hypervisor.pooldefs import PoolError, PoolKind, PoolSpec, check_uuid, dir_pool, nfs_pool
from agent.hypervisor.pools import Pools
from protocol.messages.enums import StoragePoolType
from protocol.messages.storage import (
    DeleteStoragePoolCommand,
    GetStorageStatsAnswer,
    GetStorageStatsCommand,
    ModifyStoragePoolAnswer,
    ModifyStoragePoolCommand,
    StoragePoolInfo,
)
from protocol.messages.to import StorageFilerTO
from protocol.model import Answer, Message

NFS_MOUNT_OPTIONS = "nfsmountopts"  # ApiConstants.NFS_MOUNT_OPTIONS, a pool detail
_KINDS = {
    StoragePoolType.NETWORK_FILESYSTEM: PoolKind.NFS,
    StoragePoolType.SHARED_MOUNT_POINT: PoolKind.SHARED_MOUNT_POINT,
    StoragePoolType.FILESYSTEM: PoolKind.LOCAL,
}


class StorageContext(Protocol):
    @property
    def config(self) -> AgentConfig: ...

    @property
    def pools(self) -> Pools: ...


def pool_spec(pool: StorageFilerTO, details: dict[str, str] | None, mount_root: str) -> PoolSpec:
    """Our PoolSpec for a pool as the MS names it; PoolError for what this agent cannot serve."""
    kind = _KINDS.get(pool.type) if pool.type is not None else None
    if kind is None:
        served = ", ".join(k.value for k in _KINDS)
        name = pool.type.value if pool.type is not None else "none"
        raise PoolError(f"pool type {name} is not supported by this agent (it serves {served})")
    uuid = pool.uuid or ""
    if kind is PoolKind.NFS:
        options = (details or {}).get(NFS_MOUNT_OPTIONS)
        return nfs_pool(uuid, pool.host, pool.path, mount_root=mount_root, options=options)
    return dir_pool(uuid, pool.path, kind)


@handler(ModifyStoragePoolCommand)
async def modify_storage_pool(cmd: ModifyStoragePoolCommand, ctx: StorageContext) -> Message:
    pool = cmd.pool
    if pool is None:
        return Answer(result=False, details="ModifyStoragePoolCommand names no pool")
    if not cmd.add:
        try:
            await ctx.pools.remove(check_uuid(pool.uuid))
        except (PoolError, HypervisorError) as exc:
            return ModifyStoragePoolAnswer(
                result=False, details=f"Failed to delete storage pool: {exc}"
            )
        return ModifyStoragePoolAnswer(result=True)
    try:
        spec = pool_spec(pool, cmd.details, ctx.config.mount_path)
        info = await ctx.pools.add(spec)
    except (PoolError, HypervisorError) as exc:
        return Answer(result=False, details=f"Failed to create storage pool: {exc}")
    pool_info = StoragePoolInfo(
        uuid=None,  # as the Java constructor: the MS knows its pool
        host=pool.host,
        host_path=pool.path,
        # The MS's own "/mnt//<uuid>" name, stored as is; it must not be null (the MS would
        # throw): the pool's real path stands in should a command come without one.
        local_path=cmd.local_path or spec.target,
        pool_type=pool.type,
        capacity_bytes=info.capacity,
        available_bytes=info.available,
    )
    return ModifyStoragePoolAnswer(result=True, pool_info=pool_info, template_info={})


@handler(DeleteStoragePoolCommand)
async def delete_storage_pool(cmd: DeleteStoragePoolCommand, ctx: StorageContext) -> Message:
    if cmd.remove_datastore:
        return Answer(result=True)  # managed storage: the datastore is not a libvirt pool here
    if cmd.pool is None:
        return Answer(result=False, details="DeleteStoragePoolCommand names no pool")
    try:
        await ctx.pools.remove(check_uuid(cmd.pool.uuid))
    except (PoolError, HypervisorError) as exc:
        return Answer(result=False, details=f"Failed to delete storage pool: {exc}")
    return Answer(result=True)


@handler(GetStorageStatsCommand)
async def get_storage_stats(cmd: GetStorageStatsCommand, ctx: StorageContext) -> Message:
    try:
        info = await ctx.pools.info(check_uuid(cmd.id), refresh=True)
    except (PoolError, HypervisorError) as exc:
        return GetStorageStatsAnswer(result=False, details=f"cannot read the pool's sizes: {exc}")
    if info is None:
        return GetStorageStatsAnswer(
            result=False,
            details=f"no storage pool to get statistics from: libvirt has no pool {cmd.id} "
            "on this host (it is attached by ModifyStoragePoolCommand)",
        )
    return GetStorageStatsAnswer(
        result=True, capacity_bytes=info.capacity, used_bytes=info.allocation
    )
