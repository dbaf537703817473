"""Live migration: MigrateCommand on the source, PrepareForMigrationCommand on the target.

The work is the migration engine's (agent.hypervisor.migration.engine); a handler adds what
only the agent knows: whether this host is secured (evaluated at each command), and, on the
target, which TLS files a secured host lacks to receive.
"""

from __future__ import annotations

from typing import Protocol

from agent.certs import system_pki
from agent.config import AgentConfig
from agent.handlers import handler
from agent.hypervisor.migration.engine import Migrations
from protocol.messages.migration import MigrateCommand, PrepareForMigrationCommand
from protocol.model import Message


class MigrationContext(Protocol):
    @property
    def config(self) -> AgentConfig: ...

    @property
    def migrations(self) -> Migrations: ...


@handler(MigrateCommand)
async def migrate(cmd: MigrateCommand, ctx: MigrationContext) -> Message:
    secured = await system_pki.secured(ctx.config)
    return await ctx.migrations.migrate(cmd, secured=secured, config=ctx.config)


@handler(PrepareForMigrationCommand)
async def prepare_for_migration(cmd: PrepareForMigrationCommand, ctx: MigrationContext) -> Message:
    missing: list[str] = []
    if await system_pki.secured(ctx.config):
        missing = system_pki.missing(ctx.config.pki_root, system_pki.MIGRATION_TLS_FILES)
    return await ctx.migrations.prepare(cmd, missing_tls_files=missing, config=ctx.config)
