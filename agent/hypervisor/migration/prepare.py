"""PrepareForMigrationCommand on the destination, as LibvirtPrepareForMigrationCommandWrapper
does it: the VM's NICs plugged (the VLAN bridges made where missing, agent.hypervisor.vifs)
and the answer's fields filled: ``newVmCpuShares`` computed here (this host's cgroup version
decides the scale; the MS copies it into the MigrateCommand, whose source writes it into the
destination's XML) and ``dpdkInterfaceMapping`` (empty: no DPDK/vhost-user ports here).

Before that, what only this agent checks: libvirtd reachable, the TLS files of a secured
host, and migration.max.incoming. ``rollback=true`` is the MS undoing a prepare: the Java
agent only disconnects managed disks (none here) and answers success; the VLAN bridges
stay, as they do there (a later stop or unplug removes the unused ones).
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog
import trio

from agent.config import AgentConfig
from agent.hypervisor import domains
from agent.hypervisor.connection import Hypervisor, HypervisorError
from protocol.codec import from_json
from protocol.errors import BodyError
from protocol.messages.migration import PrepareForMigrationAnswer, PrepareForMigrationCommand
from protocol.messages.to import VirtualMachineTO

log = structlog.get_logger("agent.hypervisor.migration.prepare")


async def incoming_migrations(hypervisor: Hypervisor) -> int:
    """Domains paused because an incoming migration is filling them."""
    try:
        return await hypervisor.call(domains.incoming_migrations)
    except HypervisorError:
        return 0


async def cpu_shares_here(hypervisor: Hypervisor, vm: VirtualMachineTO) -> int | None:
    """calculateCpuShares on this host; None when the TO has no speed to compute from."""
    # Here, not at the top: an idle agent never loads the domain XML builder.
    from agent.hypervisor import domainxml
    from agent.hypervisor.lifecycle import cgroup_v2_capacity

    facts = hypervisor.last_facts
    capacity = 0
    if facts is not None:
        capacity = await trio.to_thread.run_sync(cgroup_v2_capacity, facts.cpus, facts.speed_mhz)
    try:
        return domainxml.cpu_shares(vm, capacity)
    except domainxml.DomainSpecError:
        return None


async def prepare(
    hypervisor: Hypervisor,
    cmd: PrepareForMigrationCommand,
    cfg: AgentConfig,
    *,
    missing_tls_files: Sequence[str] = (),
) -> PrepareForMigrationAnswer:
    """``missing_tls_files``: the PKI files a secured host lacks to receive over TLS."""
    name = cmd.vm_name or "?"
    try:
        vm = from_json(VirtualMachineTO, cmd.vm or {}, "PrepareForMigrationCommand.vm")
    except BodyError as exc:
        return PrepareForMigrationAnswer(
            result=False, details=f"cannot receive {name}: the command's vm is malformed: {exc}"
        )
    if cmd.rollback:
        log.info("prepare for migration rolled back", vm=name)
        return PrepareForMigrationAnswer(result=True)
    if not await hypervisor.healthy():
        return PrepareForMigrationAnswer(
            result=False,
            details=f"cannot receive {name}: libvirtd on this host is not reachable "
            f"({hypervisor.last_error})",
        )
    if missing_tls_files:
        return PrepareForMigrationAnswer(
            result=False,
            details=f"cannot receive {name} securely: missing {', '.join(missing_tls_files)} "
            "(run `kvm-agent setup --secure-libvirtd`)",
        )
    incoming = await incoming_migrations(hypervisor)
    limit = cfg.max_incoming_migrations
    if incoming >= limit:
        return PrepareForMigrationAnswer(
            result=False,
            details=f"cannot receive {name}: {incoming} incoming migrations already in "
            f"progress (migration.max.incoming={limit})",
        )
    from agent.hypervisor import vifs  # NIC plumbing: loaded when first needed

    try:
        plugged = await vifs.plug_nics(vm.nics or [], vifs.TrafficLabels.from_config(cfg))
    except vifs.VifError as exc:
        return PrepareForMigrationAnswer(result=False, details=f"cannot receive {name}: {exc}")
    shares = await cpu_shares_here(hypervisor, vm)
    log.info(
        "prepared for an incoming migration",
        vm=name,
        bridges=[p.bridge for p in plugged],
        cpu_shares=shares,
    )
    return PrepareForMigrationAnswer(
        result=True, dpdk_interface_mapping={}, new_vm_cpu_shares=shares
    )
