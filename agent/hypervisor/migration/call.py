"""The one blocking libvirt call of a migration (``migrateToURI3``), what goes into it, and
the native-TLS policy's decisions.

Flags, as CloudStack drives a KVM migration, with two differences of ours: PEER2PEER (the
source's libvirtd talks to the destination's over qemu+tls, so only libvirtd needs client
certificates), and VIR_MIGRATE_TLS on a secured host (QEMU encrypts guest memory and the
NBD disk stream, not only libvirt's control channel).

Persistence travels with the domain. CloudStack's domains are transient: the destination's
copy is transient too (no PERSIST_DEST) and nothing stays defined on the source once the
VM has left. A persistent domain (one defined by hand) keeps its definition: PERSIST_DEST
with UNDEFINE_SOURCE, which libvirt applies only when the migration succeeded, so that a
failed migration leaves the source's definition untouched (the Java agent undefines a
persistent source even after a failure, which would leave the VM running undefined).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import libvirt
from attrs import frozen

from agent.config import NativeTls
from agent.hypervisor.migration import destxml
from protocol.messages.migration import MigrateCommand, MigrateDiskInfo


@frozen
class CallSpec:
    """Everything the worker thread needs, read from the command and the configuration."""

    vm: str
    dest_ip: str
    uri: str
    native_tls: bool
    speed: int  # MiB/s; <= 0: libvirt's default
    auto_converge: bool = False
    storage: Mapping[str, MigrateDiskInfo] = {}
    storage_managed: bool = False
    non_shared_inc: bool = False
    cpu_shares: int | None = None
    vnc_password: str | None = None


def spec_for(
    cmd: MigrateCommand, *, vm: str, dest: str, uri: str, native_tls: bool, speed: int
) -> CallSpec:
    to = cmd.vm_to or {}
    password = to.get("vncPassword")
    storage = dict(cmd.migrate_storage or {})
    return CallSpec(
        vm=vm,
        dest_ip=dest,
        uri=uri,
        native_tls=native_tls,
        speed=speed,
        auto_converge=cmd.auto_convergence,
        storage=storage,
        storage_managed=cmd.migrate_storage_managed,
        non_shared_inc=cmd.migrate_non_shared_inc,
        cpu_shares=cmd.new_vm_cpu_shares,
        vnc_password=password if isinstance(password, str) else None,
    )


def uses_native_tls(policy: NativeTls, secured: bool) -> bool:
    """A first attempt with QEMU native TLS? Only a secured host has the certificates."""
    return secured and policy is not NativeTls.OFF


def destination_lacks_native_tls(error: str) -> bool:
    """libvirt's text when the destination has no /etc/pki/qemu (a Java-agent host): QEMU
    there cannot load its TLS credentials. Our own files were checked (the host is secured)."""
    low = error.lower()
    return "unable to access credentials" in low or (
        "/etc/pki/qemu" in low and "no such file" in low
    )


def flags_for(spec: CallSpec, *, persistent: bool) -> int:
    flags: int = libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
    if persistent:
        flags |= libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    if spec.native_tls:
        flags |= libvirt.VIR_MIGRATE_TLS
    if spec.auto_converge:
        flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
    if spec.storage:
        # The disks' data over NBD, inside the migration's native TLS when it has it.
        flags |= (
            libvirt.VIR_MIGRATE_NON_SHARED_INC
            if spec.non_shared_inc
            else libvirt.VIR_MIGRATE_NON_SHARED_DISK
        )
    return flags


def params_for(spec: CallSpec, xml: str) -> tuple[dict[str, Any], tuple[str, ...]]:
    """migrateToURI3's parameters from the source's XML; and the disks copied over NBD."""
    dest = destxml.rewrite(
        xml,
        dest_ip=spec.dest_ip,
        vnc_password=spec.vnc_password,
        cpu_shares=spec.cpu_shares,
        storage=spec.storage,
        storage_managed=spec.storage_managed,
    )
    params: dict[str, Any] = {
        libvirt.VIR_MIGRATE_PARAM_DEST_XML: dest.xml,
        libvirt.VIR_MIGRATE_PARAM_DEST_NAME: spec.vm,
    }
    if spec.speed > 0:
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = spec.speed  # MiB/s
    if dest.migrate_disks:
        params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = list(dest.migrate_disks)
    return params, dest.migrate_disks


def migrate_call(conn: Any, spec: CallSpec) -> None:
    """In a worker thread: the source's XML (with its VNC password, so the destination keeps
    it), rewritten for the destination, then the migration itself."""
    dom = conn.lookupByName(spec.vm)
    persistent = bool(dom.isPersistent())
    xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE | libvirt.VIR_DOMAIN_XML_SECURE)
    try:
        params, _disks = params_for(spec, xml)
    except destxml.DestXmlError as exc:
        # Raised as libvirt's own error so that the engine answers it like one.
        raise libvirt.libvirtError(f"cannot build the destination's domain XML: {exc}") from None
    dom.migrateToURI3(spec.uri, params, flags_for(spec, persistent=persistent))
