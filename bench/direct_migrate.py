"""One direct ``migrateToURI3`` call, timed: the baseline the agent is compared with.

Run inside a lab host: ``python -m bench.direct_migrate VM URI [--tls]``; prints seconds.
"""

from __future__ import annotations

import argparse
import time

import libvirt


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("vm")
    parser.add_argument("uri")
    parser.add_argument("--tls", action="store_true", help="QEMU native TLS")
    args = parser.parse_args()
    conn = libvirt.open("qemu:///system")
    dom = conn.lookupByName(args.vm)
    flags = (
        libvirt.VIR_MIGRATE_LIVE
        | libvirt.VIR_MIGRATE_PEER2PEER
        | libvirt.VIR_MIGRATE_PERSIST_DEST
        | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    )
    if args.tls:
        flags |= libvirt.VIR_MIGRATE_TLS
    started = time.monotonic()
    xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE)
    dom.migrateToURI3(args.uri, {libvirt.VIR_MIGRATE_PARAM_DEST_XML: xml}, flags)
    print(f"{time.monotonic() - started:.4f}")


if __name__ == "__main__":
    main()
