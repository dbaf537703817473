"""The destination's domain XML (VIR_MIGRATE_PARAM_DEST_XML), from the source's, as
CloudStack's LibvirtMigrateCommandWrapper edits it: VNC listening on the destination's
address (and the MS's password), the CPU shares the destination computed, and the disks of
a storage migration pointed at their new paths. Pure: no libvirt, no I/O.

The XML holds the VNC password (it is read with VIR_DOMAIN_XML_SECURE so that the
destination keeps it): never log it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping

from attrs import frozen

from protocol.messages.migration import MigrateDiskInfo

VNC_PASSWORD_MAX = 8  # QEMU's VNC authentication uses 8 characters, as the Java agent cuts it
# Keep the prefixes libvirt writes (ElementTree would rename them ns0, ns1...).
ET.register_namespace("qemu", "http://libvirt.org/schemas/domain/qemu/1.0")


class DestXmlError(ValueError):
    """The source's XML cannot be rewritten (libvirt gave something that is not a domain)."""


@frozen
class DestXml:
    xml: str
    migrate_disks: tuple[str, ...]  # target devices whose data goes over NBD (vda, ...)


def rewrite_graphics_listen(xml: str, dest_ip: str) -> str:
    """Only the listen addresses (kept for callers that need nothing else)."""
    return rewrite(xml, dest_ip=dest_ip).xml


def rewrite(
    xml: str,
    *,
    dest_ip: str,
    vnc_password: str | None = None,
    cpu_shares: int | None = None,
    storage: Mapping[str, MigrateDiskInfo] | None = None,
    storage_managed: bool = False,
) -> DestXml:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise DestXmlError(f"the domain XML libvirt gave is not XML: {exc}") from None
    if root.tag != "domain":
        raise DestXmlError(f"the domain XML libvirt gave has <{root.tag}> at its root")
    _graphics(root, dest_ip, vnc_password)
    if cpu_shares is not None and cpu_shares > 0:
        _shares(root, cpu_shares)
    disks = _storage(root, storage or {}, storage_managed)
    return DestXml(ET.tostring(root, encoding="unicode"), disks)


def _graphics(root: ET.Element, dest_ip: str, vnc_password: str | None) -> None:
    # The Java agent rewrites every listen/address of <graphics> (a regex that misses IPv6
    # addresses); a VNC display that listened on the source's IP cannot bind on the target.
    for graphics in root.iterfind("./devices/graphics"):
        if "listen" in graphics.attrib:
            graphics.set("listen", dest_ip)
        for listen in graphics.iterfind("listen"):
            if listen.get("type") == "address":
                listen.set("address", dest_ip)
        if vnc_password and graphics.get("type") == "vnc" and "passwd" in graphics.attrib:
            graphics.set("passwd", vnc_password[:VNC_PASSWORD_MAX])


def _shares(root: ET.Element, shares: int) -> None:
    # The MS sends the shares the destination computed in PrepareForMigrationAnswer (cgroup
    # v1 and v2 hosts count them differently). Only where the domain has shares, as the Java
    # agent does: a domain started without them (libvirt without the cpu cgroup controller)
    # would be refused on an equal destination.
    element = root.find("./cputune/shares")
    if element is not None:
        element.text = str(shares)


def _storage(
    root: ET.Element, storage: Mapping[str, MigrateDiskInfo], managed: bool
) -> tuple[str, ...]:
    """Each disk whose source path contains a key of ``storage`` (the source volume's path,
    as the MS sends it) is pointed at its new place; returns their target devices."""
    moved: list[str] = []
    used: set[str] = set()
    for disk in root.iterfind("./devices/disk"):
        source = disk.find("source")
        path = _source_path(source)
        key = next((k for k in storage if k and path and k in path), None)
        if key is None or source is None:
            continue
        info = storage[key]
        if not info.source_text:
            raise DestXmlError(f"migrateStorage[{key}] has no sourceText (the new path)")
        attr = (info.source or "FILE").lower()  # FILE -> file, DEV -> dev
        disk.set("type", (info.disk_type or "FILE").lower())
        new_source = ET.Element("source", {attr: info.source_text})
        disk.insert(list(disk).index(source), new_source)
        disk.remove(source)
        backing = disk.find("backingStore")
        if backing is not None and info.backing_store_text:
            old = backing.find("source")
            if old is not None:
                backing.remove(old)
            backing.append(ET.Element("source", {attr: info.backing_store_text}))
        if managed:
            driver = disk.find("driver")
            if driver is not None and info.driver_type:
                driver.set("type", info.driver_type.lower())
            for auth in disk.findall("auth"):
                disk.remove(auth)
        target = disk.find("target")
        if target is None or not target.get("dev"):
            raise DestXmlError(f"the disk {path} has no target device to migrate")
        moved.append(target.get("dev", ""))
        used.add(key)
    if unused := sorted(set(storage) - used):
        raise DestXmlError(
            f"migrateStorage names {', '.join(unused)}, which no disk of this VM uses "
            "(the keys are the source volumes' paths)"
        )
    return tuple(moved)


def _source_path(source: ET.Element | None) -> str | None:
    if source is None:
        return None
    return source.get("file") or source.get("dev") or source.get("name")
