"""``python -m lab.mgmt``: the lab management server's command line (:mod:`lab.control`).

The server itself is :mod:`lab.ms`; its names are re-exported here for older imports.
"""

from __future__ import annotations

import sys

from lab.ms import (
    ALERT,
    CONNECTING,
    DISCONNECTED,
    UP,
    CommandError,
    HostNotConnected,
    LabError,
    ManagementServer,
    MigrationFailed,
    MigrationRefused,
    succeeded,
)

__all__ = [
    "ALERT",
    "CONNECTING",
    "DISCONNECTED",
    "UP",
    "CommandError",
    "HostNotConnected",
    "LabError",
    "ManagementServer",
    "MigrationFailed",
    "MigrationRefused",
    "succeeded",
]

if __name__ == "__main__":
    from lab.control import main

    sys.exit(main())
