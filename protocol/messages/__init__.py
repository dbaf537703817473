"""Every modelled message class, and the registry that maps Java class names to them."""

from __future__ import annotations

import functools

from protocol.messages.certificates import (
    SetupCertificateAnswer,
    SetupCertificateCommand,
    SetupKeystoreAnswer,
    SetupKeyStoreCommand,
)
from protocol.messages.migration import (
    MigrateAnswer,
    MigrateCommand,
    MigrateDiskInfo,
    PrepareForMigrationAnswer,
    PrepareForMigrationCommand,
)
from protocol.messages.session import (
    CheckHealthAnswer,
    CheckHealthCommand,
    HostType,
    HostVmStateReportEntry,
    MaintainAnswer,
    MaintainCommand,
    MigrateAgentConnectionAnswer,
    MigrateAgentConnectionCommand,
    PingAnswer,
    PingCommand,
    PingRoutingCommand,
    PowerState,
    ReadyAnswer,
    ReadyCommand,
    SetupMSListAnswer,
    SetupMSListCommand,
    ShutdownCommand,
    StartupAnswer,
    StartupCommand,
    StartupRoutingCommand,
    UnsupportedAnswer,
)
from protocol.model import Answer, Command, Message

MESSAGE_TYPES: tuple[type[Message], ...] = (
    Command,
    Answer,
    UnsupportedAnswer,
    StartupCommand,
    StartupRoutingCommand,
    StartupAnswer,
    ReadyCommand,
    ReadyAnswer,
    PingCommand,
    PingRoutingCommand,
    PingAnswer,
    ShutdownCommand,
    CheckHealthCommand,
    CheckHealthAnswer,
    MaintainCommand,
    MaintainAnswer,
    SetupMSListCommand,
    SetupMSListAnswer,
    MigrateAgentConnectionCommand,
    MigrateAgentConnectionAnswer,
    MigrateCommand,
    MigrateAnswer,
    PrepareForMigrationCommand,
    PrepareForMigrationAnswer,
    SetupKeyStoreCommand,
    SetupKeystoreAnswer,
    SetupCertificateCommand,
    SetupCertificateAnswer,
)


@functools.cache
def registry() -> dict[str, type[Message]]:
    return {t.JAVA_CLASS: t for t in MESSAGE_TYPES}


__all__ = [
    "MESSAGE_TYPES",
    "Answer",
    "CheckHealthAnswer",
    "CheckHealthCommand",
    "Command",
    "HostType",
    "HostVmStateReportEntry",
    "MaintainAnswer",
    "MaintainCommand",
    "Message",
    "MigrateAgentConnectionAnswer",
    "MigrateAgentConnectionCommand",
    "MigrateAnswer",
    "MigrateCommand",
    "MigrateDiskInfo",
    "PingAnswer",
    "PingCommand",
    "PingRoutingCommand",
    "PowerState",
    "PrepareForMigrationAnswer",
    "PrepareForMigrationCommand",
    "ReadyAnswer",
    "ReadyCommand",
    "SetupCertificateAnswer",
    "SetupCertificateCommand",
    "SetupKeyStoreCommand",
    "SetupKeystoreAnswer",
    "SetupMSListAnswer",
    "SetupMSListCommand",
    "ShutdownCommand",
    "StartupAnswer",
    "StartupCommand",
    "StartupRoutingCommand",
    "UnsupportedAnswer",
    "registry",
]
