"""The last resort of ``ha.fence.reboot=true``: reboot the host as kvmheartbeat.sh -c does.

The Java agent's script logs to syslog, starts ``sync`` in the background, waits 5 s and
writes ``b`` to /proc/sysrq-trigger (an immediate reboot, no clean shutdown: a host that
cannot reach its storage may hang in any clean step). Blocking: call it in a worker thread.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

SYSRQ_TRIGGER = Path("/proc/sysrq-trigger")
SYNC_WAIT = 5.0  # seconds given to sync, which a dead NFS server can hang for ever


def reboot_host(sysrq: Path = SYSRQ_TRIGGER, sync_wait: float = SYNC_WAIT) -> None:
    threading.Thread(target=os.sync, name="fence-sync", daemon=True).start()
    time.sleep(sync_wait)
    with sysrq.open("w") as fh:
        fh.write("b")
