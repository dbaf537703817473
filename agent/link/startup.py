"""What the agent says about itself when it registers: the StartupRoutingCommand.

The fields are those CloudStack's KVM agent sends (LibvirtComputingResource.initialize and
Agent.setupStartupCommand); docs/protocol.md lists them and their sources, and
tests/test_startup_golden.py holds the Java classes' field list.
"""

from __future__ import annotations

from typing import Any, Protocol

import trio

from agent import __version__
from agent.certs import system_pki
from agent.config import RESOURCE_NAME, AgentConfig
from agent.hypervisor.connection import Hypervisor, HypervisorError
from agent.hypervisor.facts import os_only_facts
from agent.hypervisor.pooldefs import PoolError, PoolKind, dir_pool
from agent.hypervisor.pools import Pools
from agent.link.state import AgentState, StateStore
from protocol.messages.enums import StoragePoolType, StorageResourceType
from protocol.messages.host import StartupRoutingCommand
from protocol.messages.storage import StartupStorageCommand, StoragePoolInfo


class StartupServices(Protocol):
    @property
    def config(self) -> AgentConfig: ...

    @property
    def hypervisor(self) -> Hypervisor: ...

    @property
    def state(self) -> StateStore: ...

    @property
    def pools(self) -> Pools: ...


async def startup_command(services: StartupServices, log: Any) -> StartupRoutingCommand:
    """What CloudStack's KVM agent sends (LibvirtComputingResource.initialize and
    Agent.setupStartupCommand); docs/protocol.md lists the fields and their sources."""
    cfg = services.config
    try:
        facts = await services.hypervisor.host_facts()
    except HypervisorError as exc:
        log.warning("libvirt unavailable, registering with the last known facts", error=str(exc))
        cached = services.hypervisor.last_facts
        facts = (
            cached
            if cached is not None
            else await trio.to_thread.run_sync(os_only_facts, cfg.private_network_device)
        )
    private = facts.private
    state = services.state.current
    reserved = cfg.host_reserved_mem_mb * 1024 * 1024
    if reserved > facts.memory:
        log.warning(
            "host.reserved.mem.mb is more than the host's memory: offering none to guests",
            reserved_mib=cfg.host_reserved_mem_mb,
            memory_mib=facts.memory // (1024 * 1024),
        )
    # Keys with an empty value are left out, as the Java agent's parser of versions.sh
    # leaves them out.
    os_details = {
        "Host.OS": facts.os_name,
        "Host.OS.Version": facts.os_version,
        "Host.OS.Kernel.Version": facts.kernel,
    }
    return StartupRoutingCommand(
        data_center=cfg.zone,
        pod=cfg.pod,
        cluster=cfg.cluster,
        guid=f"{cfg.guid}-LibvirtComputingResource",
        name=facts.hostname,
        id=state.host_id,
        version=__version__,
        iqn=facts.iqn,
        # The Java agent reads these from public.network.device, which CloudStack's
        # set-up points at the same bridge as the private one; storage falls back to
        # the private interface there too.
        private_ip_address=private.ip if private else None,
        private_mac_address=private.mac if private else None,
        private_netmask=private.netmask if private else None,
        public_ip_address=private.ip if private else None,
        public_mac_address=private.mac if private else None,
        public_netmask=private.netmask if private else None,
        storage_ip_address=private.ip if private else None,
        storage_mac_address=private.mac if private else None,
        storage_netmask=private.netmask if private else None,
        resource_name=RESOURCE_NAME,
        gateway_ip_address=facts.gateway,
        ms_host_list=ms_host_list(cfg, state),
        arch=facts.arch,
        cpu_sockets=facts.cpu_sockets,
        cpus=facts.cpus,
        speed=facts.speed_mhz,
        memory=max(facts.memory - reserved, 0),
        dom0_min_memory=reserved,
        caps=facts.caps,
        pool="/root",  # LibvirtComputingResource's default "pool"
        hypervisor_type="KVM",
        # No hypervisorVersion: the KVM agent sends none, and the MS looks guest OS
        # mappings up by the host's version ("default" when it has none).
        host_details={
            **{k: v for k, v in os_details.items() if v},
            "secured": "true" if await system_pki.secured(cfg) else "false",
            "host.volume.encryption": "false",
            "host.instance.conversion": "false",
            "com.cloud.network.Networks.RouterPrivateIpStrategy": "HostLocal",
        },
    )


def ms_host_list(config: AgentConfig, state: AgentState) -> str:
    """The ``host`` value as the Java agent keeps it: the list the MS sent last
    (kept in state.dir), else agent.properties' own."""
    if not state.ms_hosts:
        return config.host
    hosts = ",".join(state.ms_hosts)
    return f"{hosts}@{state.lb_algorithm}" if state.lb_algorithm else hosts


async def local_storage_commands(
    services: StartupServices, routing: StartupRoutingCommand, log: Any
) -> list[StartupStorageCommand]:
    """A StartupStorageCommand per local pool of ``local.storage.uuid``/``path``, each set up
    as a libvirt dir pool first (LibvirtComputingResource.initialize/createLocalStoragePool).
    A pool that cannot be set up is logged and left out, as the Java agent does.

    The identity fields are the routing command's: the Java agent (Agent.setupStartupCommand)
    overwrites them on every startup command, the guid included (the host's, not the pool's).
    """
    commands = []
    for uuid, path in services.config.local_storage:
        try:
            info = await services.pools.add(dir_pool(uuid, path, PoolKind.LOCAL))
        except (PoolError, HypervisorError) as exc:
            log.warning(
                "local storage pool not set up: not reported to the management server",
                pool=uuid,
                path=path,
                error=str(exc),
            )
            continue
        pool_info = StoragePoolInfo(
            uuid=uuid,
            host=routing.private_ip_address,
            host_path=path,
            local_path=path,
            pool_type=StoragePoolType.FILESYSTEM,
            capacity_bytes=info.capacity,
            available_bytes=info.available,
        )
        commands.append(
            StartupStorageCommand(
                data_center=routing.data_center,
                pod=routing.pod,
                guid=routing.guid,
                name=routing.name,
                id=routing.id,
                version=routing.version,
                resource_name=routing.resource_name,
                ms_host_list=routing.ms_host_list,
                connection_transferred=routing.connection_transferred,
                arch=routing.arch,
                pool_info=pool_info,
                resource_type=StorageResourceType.STORAGE_POOL,
            )
        )
    return commands
