"""The host's network, as the MS checks it while a host connects and when it investigates.

CheckNetworkCommand -> CheckNetworkAnswer (the MS casts to it: any other class, or
result=false, sends the connecting host to Alert): every traffic label that names no usable
bridge or interface on this host, checked as CloudStack's KVM agent checks them
(agent.hypervisor.network). PingTestCommand -> Answer (result: the address answers).
CleanupNetworkRulesCmd -> Answer(true): no security groups here, which is what the Java agent
answers at once whatever they are (the rule clean-up it then repeats answers no one).
"""

from __future__ import annotations

from typing import Protocol

import structlog
import trio

from agent.config import AgentConfig
from agent.handlers import handler
from agent.hypervisor import network
from protocol.messages.network import (
    CheckNetworkAnswer,
    CheckNetworkCommand,
    CleanupNetworkRulesCmd,
    PingTestCommand,
)
from protocol.model import Answer, Message

log = structlog.get_logger("agent.network")

PRIVATE_KEY = "id_rsa.cloud"  # in ssh.keys.dir: the key that reaches system VMs


class NetworkContext(Protocol):
    @property
    def config(self) -> AgentConfig: ...


@handler(CheckNetworkCommand)
async def check_network(cmd: CheckNetworkCommand, ctx: NetworkContext) -> Message:
    # The Java agent checks guest, management (private) and public labels, in that order;
    # the storage label is not checked. An unset label passes.
    labels: list[str | None] = []
    for info in cmd.network_info_list or []:
        labels += [info.guest_network_name, info.private_network_name, info.public_network_name]
    missing = await trio.to_thread.run_sync(network.missing_networks, labels)
    if missing:
        details = "Can not find network: " + ", ".join(str(m) for m in missing)
        log.warning("traffic labels missing on this host", missing=[m.name for m in missing])
        return CheckNetworkAnswer(result=False, details=details)
    return CheckNetworkAnswer(result=True)


@handler(PingTestCommand)
async def ping_test(cmd: PingTestCommand, ctx: NetworkContext) -> Message:
    try:
        if cmd.computing_host_ip is not None:
            problem = await network.ping_host(cmd.computing_host_ip)
        elif cmd.router_ip is not None and cmd.private_ip is not None:
            key = ctx.config.ssh_keys_dir / PRIVATE_KEY
            problem = await network.ping_through_router(cmd.router_ip, cmd.private_ip, key)
        else:
            return Answer(result=False, details="routerip and private ip is null")
    except network.PingError as exc:
        return Answer(result=False, details=str(exc))
    if problem is not None:
        return Answer(result=False, details=problem)
    return Answer(result=True)


@handler(CleanupNetworkRulesCmd)
async def cleanup_network_rules(cmd: CleanupNetworkRulesCmd, ctx: NetworkContext) -> Message:
    log.debug("no security group rules on this host to clean up", interval=cmd.interval)
    return Answer(result=True)
