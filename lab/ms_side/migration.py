"""The migration readers of a 4.21 management server.

Sources (CloudStack 4.21.0.0): ``engine/orchestration/src/main/java/com/cloud/vm/
VirtualMachineManagerImpl.java`` (``migrate``: the PrepareForMigration check, then
``buildMigrateCommand``'s cast to PrepareForMigrationAnswer and its reads of
``dpdkInterfaceMapping`` and ``newVmCpuShares``; the MigrateAnswer's result and details);
``engine/storage/datamotion/.../StorageSystemDataMotionStrategy.java`` (storage live
migration: ``(MigrateAnswer)`` cast).
"""

from __future__ import annotations

from lab.ms_side.verdict import MsVerdict, class_cast, details_of, result_of
from protocol.messages.migration import MigrateAnswer, PrepareForMigrationAnswer
from protocol.model import Message


def prepare_for_migration(answer: Message | None) -> MsVerdict:
    """``pfma == null || !pfma.getResult()`` -> "Unable to prepare for migration due to ...";
    then ``(PrepareForMigrationAnswer) answer`` in buildMigrateCommand."""
    if answer is None or not result_of(answer):
        why = details_of(answer) if answer is not None else "null answer returned"
        return MsVerdict(False, f"'Unable to prepare for migration due to {why}': NICs rolled back")
    if not isinstance(answer, PrepareForMigrationAnswer):
        return MsVerdict(False, f"{class_cast(answer, PrepareForMigrationAnswer)}: no migration")
    read = {
        "dpdkInterfaceMapping": dict(answer.dpdk_interface_mapping or {}),
        "newVmCpuShares": answer.new_vm_cpu_shares,
    }
    return MsVerdict(True, "MigrateCommand built with the destination's values", read=read)


def migrate(answer: Message | None) -> MsVerdict:
    """``ma == null || !ma.getResult()`` -> CloudRuntimeException(details): a StopCommand to
    the destination, the VM stays on the source. A storage migration casts to MigrateAnswer."""
    if answer is None:
        return MsVerdict(False, "time-out: CheckVirtualMachineCommand decides where the VM is")
    if not result_of(answer):
        return MsVerdict(False, f"'{details_of(answer)}': clean-up StopCommand to the destination")
    if not isinstance(answer, MigrateAnswer):
        return MsVerdict(False, f"{class_cast(answer, MigrateAnswer)} (storage migration)")
    return MsVerdict(True, "migrated: checkVmOnHost on the destination next")
