"""The management server's part of a live migration, in the order of CloudStack 4.21's
``VirtualMachineManagerImpl.migrate`` (and, with ``migrate_storage``, of
``StorageSystemDataMotionStrategy``'s storage live migration):

1. PrepareForMigrationCommand (the VirtualMachineTO) to the destination; a null or false
   answer ends it ("Unable to prepare for migration due to ..."); the answer is cast to
   PrepareForMigrationAnswer (``buildMigrateCommand``).
2. MigrateCommand to the source: the destination's private IP and guid, the TO, the DPDK
   mapping and ``newVmCpuShares`` from step 1; ``wait`` unset on the plain path (the MS's
   own wait applies), set and ``executeInSequence`` for a storage migration.
3. Failure (null or false): the clean-up StopCommand to the **destination**.
   Success: CheckVirtualMachineCommand to the destination (``checkVmOnHost``); PowerOff or
   false there: a StopCommand to the **source** and "Unable to complete migration".

Each step is kept, with the MS's verdict on its answer (:mod:`lab.ms_side`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, Protocol

import structlog
from attrs import frozen
from structlog.typing import FilteringBoundLogger

from lab.db import HostRecord
from lab.ms.errors import HostNotConnected, MigrationFailed, MigrationRefused
from lab.ms_side import verdict_for
from lab.ms_side.verdict import MsVerdict
from protocol.messages.migration import (
    MigrateCommand,
    MigrateDiskInfo,
    PrepareForMigrationAnswer,
    PrepareForMigrationCommand,
)
from protocol.messages.vm import CheckVirtualMachineCommand, StopCommand
from protocol.model import Command, Message

_log: FilteringBoundLogger = structlog.get_logger("lab.ms.migrate")


class MigrationServer(Protocol):
    def connected_record(self, host: str | int) -> HostRecord:
        """The host's record; HostNotConnected if it has no session."""
        ...

    def send_command(
        self,
        host: str | int,
        commands: Sequence[Message],
        *,
        stop_on_error: bool = True,
        timeout: float = 60,
    ) -> Awaitable[tuple[Message, ...]]: ...


@frozen
class Step:
    host: str
    command: Command
    answer: Message
    verdict: MsVerdict

    def summary(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "command": self.command.java_class.rsplit(".", 1)[-1],
            "answer": self.answer.java_class.rsplit(".", 1)[-1],
            "result": bool(getattr(self.answer, "result", False)),
            "details": getattr(self.answer, "details", None),
            "ms": self.verdict.reason,
            "ok": self.verdict.ok,
            "read": dict(self.verdict.read),
        }


@frozen
class Migration:
    answer: Message  # the source's MigrateAnswer
    steps: tuple[Step, ...]
    migrated: bool  # as the MS concludes: the VM is now on the destination


async def migrate(
    server: MigrationServer,
    vm_name: str,
    source: str,
    destination: str,
    *,
    timeout: float,
    vm_to: Mapping[str, Any] | None = None,
    migrate_storage: Mapping[str, MigrateDiskInfo] | None = None,
) -> Migration:
    """Live-migrate ``vm_name`` as the MS does (see the module docstring)."""
    src, dst = server.connected_record(source), server.connected_record(destination)
    if src.secured != dst.secured:
        raise MigrationRefused(
            f"refusing to migrate {vm_name} from {src.guid} (secured={src.secured}) to "
            f"{dst.guid} (secured={dst.secured}): secured hosts migrate only to secured hosts"
        )
    if not dst.private_ip:
        raise MigrationRefused(f"destination {dst.guid} reported no private IP address")
    to = dict(vm_to or {"name": vm_name})
    steps: list[Step] = []

    async def send(host: HostRecord, command: Command, wait: float) -> Message:
        (answer,) = await server.send_command(host.guid, [command], timeout=wait)
        steps.append(Step(host.guid, command, answer, verdict_for(command, answer)))
        return answer

    _log.info("migrating", vm=vm_name, source=src.guid, destination=dst.guid)
    prepared = await send(dst, PrepareForMigrationCommand(vm=to), timeout)
    if not steps[-1].verdict.ok or not isinstance(prepared, PrepareForMigrationAnswer):
        raise MigrationFailed(f"{dst.guid}: {steps[-1].verdict.reason}")

    storage = dict(migrate_storage or {})
    command = MigrateCommand(
        vm_name=vm_name,
        dest_ip=dst.private_ip,
        is_windows=False,
        vm_to=to,
        execute_in_sequence=bool(storage),
        host_guid=dst.guid,
        auto_convergence=False,  # kvm.auto.convergence's default
        migrate_storage=storage or None,
        migrate_disk_info_list=list(storage.values()),
        dpdk_interface_mapping=dict(prepared.dpdk_interface_mapping or {}) or None,
        new_vm_cpu_shares=prepared.new_vm_cpu_shares,
        vlan_to_persistence_map={},
        # The plain path leaves wait unset; a storage migration sends its own.
        wait=int(timeout) if storage else 0,
    )
    # A little longer than the agent's own limit, so that its failure answer arrives.
    answer = await send(src, command, timeout + 10)
    stop = StopCommand(vm_name=vm_name, check_before_cleanup=False)
    if not steps[-1].verdict.ok:
        await send(dst, stop, 60)  # the finally's cleanup: on the destination
        return Migration(answer, tuple(steps), migrated=False)

    await send(dst, CheckVirtualMachineCommand(vm_name=vm_name, wait=20), 60)
    if not steps[-1].verdict.ok:
        await send(src, stop, 60)  # "Unable to complete migration": stopped on the source
        return Migration(answer, tuple(steps), migrated=False)
    return Migration(answer, tuple(steps), migrated=True)


__all__ = ["HostNotConnected", "Migration", "MigrationServer", "Step", "migrate"]
