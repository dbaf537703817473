"""The errors the lab management server raises to its callers."""

from __future__ import annotations


class LabError(Exception):
    """Base of the errors the lab management server raises to its callers."""


class HostNotConnected(LabError):
    """The host is unknown or has no session with this management server."""


class CommandError(LabError):
    """A command got no answer: the connection dropped or the time-out passed."""


class MigrationRefused(LabError):
    """The management server will not run this migration (e.g. secured vs unsecured host)."""


class MigrationFailed(LabError):
    """A step of the migration failed before the MigrateCommand was sent."""
