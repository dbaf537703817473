"""The management server's part of a live migration (``VirtualMachineManagerImpl``
``migrate``): PrepareForMigration on the destination, then Migrate on the source."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Protocol

import structlog
from structlog.typing import FilteringBoundLogger

from lab.db import HostRecord
from lab.ms.errors import HostNotConnected, MigrationFailed, MigrationRefused
from lab.ms_side.verdict import details_of, result_of
from protocol.messages.migration import MigrateCommand, PrepareForMigrationCommand
from protocol.model import Message

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


async def migrate(
    server: MigrationServer, vm_name: str, source: str, destination: str, *, timeout: float
) -> Message:
    """Live-migrate ``vm_name``; returns the source's answer."""
    src, dst = server.connected_record(source), server.connected_record(destination)
    if src.secured != dst.secured:
        raise MigrationRefused(
            f"refusing to migrate {vm_name} from {src.guid} (secured={src.secured}) to "
            f"{dst.guid} (secured={dst.secured}): secured hosts migrate only to secured hosts"
        )
    if not dst.private_ip:
        raise MigrationRefused(f"destination {dst.guid} reported no private IP address")
    _log.info("migrating", vm=vm_name, source=src.guid, destination=dst.guid)
    (prepared,) = await server.send_command(
        dst.guid, [PrepareForMigrationCommand(vm={"name": vm_name})], timeout=timeout
    )
    if not result_of(prepared):
        details = details_of(prepared)
        raise MigrationFailed(f"{dst.guid} could not prepare for {vm_name}: {details}")
    command = MigrateCommand(
        vm_name=vm_name, dest_ip=dst.private_ip, host_guid=dst.guid, wait=int(timeout)
    )
    # A little longer than the agent's own limit, so that its failure answer arrives.
    (answer,) = await server.send_command(src.guid, [command], timeout=timeout + 10)
    return answer


__all__ = ["HostNotConnected", "MigrationServer", "migrate"]
