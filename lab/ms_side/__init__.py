"""What CloudStack's management server does with each answer: pure functions for the lab.

Each reader takes the answer as the MS would have decoded it (``None``: no answer, as
``AgentManagerImpl.easySend`` returns on a time-out or an unreachable host) and returns a
:class:`MsVerdict`: whether the MS carries on as with a Java agent, what it does otherwise
(the cast that throws, the field it finds null, the host that goes to Alert), and the
values it reads. The rules and the Java classes they come from are in each module:
:mod:`~lab.ms_side.connect`, :mod:`~lab.ms_side.stats`, :mod:`~lab.ms_side.ha`,
:mod:`~lab.ms_side.vm`, :mod:`~lab.ms_side.volumes`. No I/O.
"""

from __future__ import annotations

from collections.abc import Callable

from lab.ms_side import connect, ha, stats, vm, volumes
from lab.ms_side.verdict import HostEffect, MsVerdict
from protocol import messages as m
from protocol.model import Command, Message

Reader = Callable[[Message | None], MsVerdict]

# The reader of each command's answer; the MS class behind each is in the reader's docstring.
READERS: dict[type[Command], Reader] = {
    m.CheckNetworkCommand: connect.check_network,
    m.ModifyStoragePoolCommand: connect.modify_storage_pool,
    m.DeleteStoragePoolCommand: connect.delete_storage_pool,
    m.SetupPersistentNetworkCommand: connect.setup_persistent_network,
    m.SetHostParamsCommand: connect.not_read,
    m.ModifySshKeysCommand: connect.not_read,
    m.CleanupNetworkRulesCmd: connect.not_read,
    m.PingTestCommand: connect.ping_test,
    m.ReadyCommand: connect.ready,
    m.GetHostStatsCommand: stats.host_stats,
    m.GetVmStatsCommand: stats.vm_stats,
    m.GetVmDiskStatsCommand: stats.vm_disk_stats,
    m.GetVmNetworkStatsCommand: stats.vm_network_stats,
    m.GetVolumeStatsCommand: stats.volume_stats,
    m.GetStorageStatsCommand: stats.storage_stats,
    m.CheckOnHostCommand: ha.check_on_host,
    m.FenceCommand: ha.fence,
    m.StopCommand: vm.stop,
    m.RebootCommand: vm.reboot,
    m.CheckVirtualMachineCommand: vm.check_vm_on_host,
    m.GetVncPortCommand: vm.vnc_port,
    m.CreateObjectCommand: volumes.create_volume,
    m.DeleteCommand: volumes.delete,
    m.AttachCommand: volumes.attach,
    m.DettachCommand: volumes.detach,
    m.ResizeVolumeCommand: volumes.resize,
}


def verdict_for(command: Command, answer: Message | None) -> MsVerdict:
    """The MS's verdict on ``answer`` to ``command`` (for a CopyCommand, by its destination)."""
    if isinstance(command, m.StartCommand):
        return vm.start(command, answer)
    if isinstance(command, m.CopyCommand):
        if isinstance(command.dest_to, m.TemplateObjectTO):
            return volumes.copy_template_to_primary(answer)
        return volumes.copy_to_volume(answer)
    reader = READERS.get(type(command))
    if reader is None:
        raise KeyError(f"no MS reader for {command.java_class}")
    return reader(answer)


__all__ = ["READERS", "HostEffect", "MsVerdict", "Reader", "verdict_for"]
