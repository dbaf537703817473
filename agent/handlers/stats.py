"""Statistics the MS collects while the host is Up: host, VMs, VM disks and NICs, volumes.

Each answer is the class the MS casts to or tests for, shaped as the Java agent shapes it
(4.21 ``LibvirtGet*StatsCommandWrapper``): a VM the MS names that libvirt does not have is
left out of the map, the answer still a success; libvirtd out of reach gives a successful
answer with a null map (host figures need no libvirt). The figures and their formulas are
the hypervisor room's (agent.hypervisor.stats).
"""

from __future__ import annotations

from typing import Protocol

from agent.config import AgentConfig
from agent.handlers import handler
from agent.hypervisor.stats import Statistics
from protocol.messages.stats import (
    GetHostStatsAnswer,
    GetHostStatsCommand,
    GetVmDiskStatsAnswer,
    GetVmDiskStatsCommand,
    GetVmNetworkStatsAnswer,
    GetVmNetworkStatsCommand,
    GetVmStatsAnswer,
    GetVmStatsCommand,
    GetVolumeStatsAnswer,
    GetVolumeStatsCommand,
    HostStatsEntry,
    VmDiskStatsEntry,
    VmNetworkStatsEntry,
    VmStatsEntry,
    VolumeStatsEntry,
)
from protocol.model import Message


class StatsContext(Protocol):
    @property
    def config(self) -> AgentConfig: ...

    @property
    def stats(self) -> Statistics: ...


@handler(GetHostStatsCommand)
async def get_host_stats(cmd: GetHostStatsCommand, ctx: StatsContext) -> Message:
    host = await ctx.stats.host(ctx.config.public_network_device)
    entry = HostStatsEntry(
        host_id=cmd.host_id,
        entity_type="host",
        cpu_utilization=host.cpu_utilization,
        average_load=host.load_average,
        network_read_kbs=host.network_read_kib,
        network_write_kbs=host.network_write_kib,
        total_memory_kbs=host.total_memory_kib,
        free_memory_kbs=host.free_memory_kib,
    )
    return GetHostStatsAnswer(result=True, host_stats=entry)


@handler(GetVmStatsCommand)
async def get_vm_stats(cmd: GetVmStatsCommand, ctx: StatsContext) -> Message:
    vms = await ctx.stats.vms(cmd.vm_names or [])
    if vms is None:
        return GetVmStatsAnswer(result=True, vm_stats_map=None)
    entries = {
        name: VmStatsEntry(
            entity_type="vm",
            num_cpus=vm.num_cpus,
            memory_kbs=vm.memory_kib,
            target_memory_kbs=vm.target_memory_kib,
            int_free_memory_kbs=vm.int_free_memory_kib,
            cpu_utilization=vm.cpu_utilization,
            network_read_kbs=vm.network_read_kib,
            network_write_kbs=vm.network_write_kib,
            disk_read_ios=vm.disk_read_ios,
            disk_write_ios=vm.disk_write_ios,
            disk_read_kbs=vm.disk_read_kib,
            disk_write_kbs=vm.disk_write_kib,
        )
        for name, vm in vms.items()
    }
    return GetVmStatsAnswer(result=True, vm_stats_map=entries)


@handler(GetVmDiskStatsCommand)
async def get_vm_disk_stats(cmd: GetVmDiskStatsCommand, ctx: StatsContext) -> Message:
    vms = await ctx.stats.vm_disks(cmd.vm_names or [])
    if vms is None:
        return GetVmDiskStatsAnswer(result=True)
    entries = {
        name: [
            VmDiskStatsEntry(
                vm_name=name,
                path=disk.counters.path,
                io_read=disk.counters.read_ios,
                io_write=disk.counters.write_ios,
                bytes_read=disk.counters.read_bytes,
                bytes_write=disk.counters.write_bytes,
                delta_io_read=disk.delta_read_ios,
                delta_io_write=disk.delta_write_ios,
                delta_bytes_read=disk.delta_read_bytes,
                delta_bytes_write=disk.delta_write_bytes,
            )
            for disk in disks
        ]
        for name, disks in vms.items()
    }
    return GetVmDiskStatsAnswer(
        result=True, details="", host_name=cmd.host_name, vm_disk_stats_map=entries
    )


@handler(GetVmNetworkStatsCommand)
async def get_vm_network_stats(cmd: GetVmNetworkStatsCommand, ctx: StatsContext) -> Message:
    vms = await ctx.stats.vm_nics(cmd.vm_names or [])
    if vms is None:
        return GetVmNetworkStatsAnswer(result=True)
    entries = {
        name: [
            VmNetworkStatsEntry(
                vm_name=name,
                mac_address=nic.mac,
                bytes_sent=nic.tx_bytes,
                bytes_received=nic.rx_bytes,
            )
            for nic in nics
        ]
        for name, nics in vms.items()
    }
    return GetVmNetworkStatsAnswer(
        result=True, details="", host_name=cmd.host_name, vm_network_stats_map=entries
    )


@handler(GetVolumeStatsCommand)
async def get_volume_stats(cmd: GetVolumeStatsCommand, ctx: StatsContext) -> Message:
    # GetVolumeStatsAnswer is always result=true (Java's constructors); a failure is a null
    # map with the reason in details.
    if not cmd.pool_uuid:
        return GetVolumeStatsAnswer(
            result=True, pool_type=cmd.pool_type, details="the command names no storage pool"
        )
    found = await ctx.stats.volumes(cmd.pool_uuid, cmd.volume_uuids or [])
    entries = None
    if found.sizes is not None:
        entries = {
            path: VolumeStatsEntry(
                volume_uuid=path, physical_size=s.physical, virtual_size=s.virtual
            )
            for path, s in found.sizes.items()
        }
    return GetVolumeStatsAnswer(
        result=True,
        details=found.error if found.error is not None else "",
        pool_uuid=cmd.pool_uuid,
        pool_type=cmd.pool_type,
        volume_stats=entries,
    )
