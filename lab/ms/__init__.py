"""The lab management server (see :mod:`lab.ms.server`), one module per job:

* :mod:`~lab.ms.server`: serving agents, the host table, the API of tests and the demo;
* :mod:`~lab.ms.connect`: the connect sequence of a 4.21 MS, from startup to Up;
* :mod:`~lab.ms.status`: the host status machine (Status.java) and the investigation rules;
* :mod:`~lab.ms.liveness`: pings, the monitor, investigating a silent host;
* :mod:`~lab.ms.stats`: the statistics cycle (StatsCollector);
* :mod:`~lab.ms.zone`: what the zone holds (traffic labels, shared pools, settings);
* :mod:`~lab.ms.link`, :mod:`~lab.ms.migrate`, :mod:`~lab.ms.sshkeys`, :mod:`~lab.ms.errors`.
"""

from __future__ import annotations

from lab.ms.errors import (
    CommandError,
    HostNotConnected,
    LabError,
    MigrationFailed,
    MigrationRefused,
)
from lab.ms.server import ALERT, CONNECTING, DISCONNECTED, UP, ManagementServer, succeeded
from lab.ms.zone import BARE, PhysicalNetwork, SharedPool, Zone, lab_zone

__all__ = [
    "ALERT",
    "BARE",
    "CONNECTING",
    "DISCONNECTED",
    "UP",
    "CommandError",
    "HostNotConnected",
    "LabError",
    "ManagementServer",
    "MigrationFailed",
    "MigrationRefused",
    "PhysicalNetwork",
    "SharedPool",
    "Zone",
    "lab_zone",
    "succeeded",
]
