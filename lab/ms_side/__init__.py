"""What CloudStack's management server does with each answer: pure functions for the lab.

Each reader takes the answer as the MS would have decoded it (``None``: no answer, as
``AgentManagerImpl.easySend`` returns on a time-out or an unreachable host) and returns a
:class:`MsVerdict`: whether the MS carries on as with a Java agent, what it does otherwise
(the cast that throws, the field it finds null, the host that goes to Alert), and the
values it reads. The rules and the Java classes they come from are in each module:
:mod:`~lab.ms_side.connect`, :mod:`~lab.ms_side.stats`, :mod:`~lab.ms_side.ha`,
:mod:`~lab.ms_side.vm`, :mod:`~lab.ms_side.volumes`, :mod:`~lab.ms_side.migration`. No I/O.
"""

from __future__ import annotations

from collections.abc import Callable

from lab.ms_side import connect, ha, migration, stats, vm, volumes
from lab.ms_side.verdict import HostEffect, MsVerdict
from protocol.messages import data_to, host, network, storage
from protocol.messages import ha as ha_msg
from protocol.messages import migration as migration_msg
from protocol.messages import stats as stats_msg
from protocol.messages import vm as vm_msg
from protocol.messages import volumes as vol_msg
from protocol.model import Command, Message

Reader = Callable[[Message | None], MsVerdict]

# The reader of each command's answer; the MS class behind each is in the reader's docstring.
READERS: dict[type[Command], Reader] = {
    network.CheckNetworkCommand: connect.check_network,
    storage.ModifyStoragePoolCommand: connect.modify_storage_pool,
    storage.DeleteStoragePoolCommand: connect.delete_storage_pool,
    network.SetupPersistentNetworkCommand: connect.setup_persistent_network,
    network.SetHostParamsCommand: connect.not_read,
    network.ModifySshKeysCommand: connect.not_read,
    network.CleanupNetworkRulesCmd: connect.not_read,
    network.PingTestCommand: connect.ping_test,
    host.ReadyCommand: connect.ready,
    stats_msg.GetHostStatsCommand: stats.host_stats,
    stats_msg.GetVmStatsCommand: stats.vm_stats,
    stats_msg.GetVmDiskStatsCommand: stats.vm_disk_stats,
    stats_msg.GetVmNetworkStatsCommand: stats.vm_network_stats,
    stats_msg.GetVolumeStatsCommand: stats.volume_stats,
    storage.GetStorageStatsCommand: stats.storage_stats,
    ha_msg.CheckOnHostCommand: ha.check_on_host,
    ha_msg.FenceCommand: ha.fence,
    vm_msg.StopCommand: vm.stop,
    vm_msg.RebootCommand: vm.reboot,
    vm_msg.CheckVirtualMachineCommand: vm.check_vm_on_host,
    vm_msg.GetVncPortCommand: vm.vnc_port,
    migration_msg.PrepareForMigrationCommand: migration.prepare_for_migration,
    migration_msg.MigrateCommand: migration.migrate,
    vol_msg.CreateObjectCommand: volumes.create_volume,
    vol_msg.DeleteCommand: volumes.delete,
    vol_msg.AttachCommand: volumes.attach,
    vol_msg.DettachCommand: volumes.detach,
    vol_msg.ResizeVolumeCommand: volumes.resize,
}


def verdict_for(command: Command, answer: Message | None) -> MsVerdict:
    """The MS's verdict on ``answer`` to ``command`` (for a CopyCommand, by its destination)."""
    if isinstance(command, vm_msg.StartCommand):
        return vm.start(command, answer)
    if isinstance(command, vol_msg.CopyCommand):
        if isinstance(command.dest_to, data_to.TemplateObjectTO):
            return volumes.copy_template_to_primary(answer)
        return volumes.copy_to_volume(answer)
    reader = READERS.get(type(command))
    if reader is None:
        raise KeyError(f"no MS reader for {command.java_class}")
    return reader(answer)


__all__ = ["READERS", "HostEffect", "MsVerdict", "Reader", "verdict_for"]
