"""The completed-job statistics of the last incoming migration of a VM, as JSON.

Run inside the destination host: ``python -m bench.job_stats VM``. Once a migration is
done the source has no domain left to ask (it is undefined there), but libvirt keeps the
statistics of the incoming migration on the destination (``jobStats`` with
``VIR_DOMAIN_JOB_STATS_COMPLETED``, operation 4 = migration in): ``time_elapsed`` is
libvirt's time of the job until QEMU reported it complete, ``downtime`` QEMU's, both in ms.
Reading them clears them, so each migration is read once.
"""

from __future__ import annotations

import argparse
import json

import libvirt


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("vm")
    args = parser.parse_args()
    conn = libvirt.open("qemu:///system")
    try:
        stats = conn.lookupByName(args.vm).jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    finally:
        conn.close()
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
