"""A 4.21 management server's connect sequence, from a StartupRoutingCommand to Up.

``AgentManagerImpl.handleConnectedAgent`` and ``notifyMonitorsOfConnection``: the
discoverer's checks, then every connect listener in turn (what each sends, with its wait;
``shared/spec/zone.md`` §1 and ``notes/zone-commands.md`` §5), then the ReadyCommand. Each
answer is judged by :func:`lab.ms_side.verdict_for`, the code of the MS class that reads it:

* a listener that "throws" (a failed verdict with a host effect) ends the sequence; the
  remaining listeners do not run, no ReadyCommand follows, the host goes to Alert (or
  Disconnected) and the MS closes the connection (``removeAgent`` ->
  ``ConnectedAgentAttache.disconnect``). handleConnectedAgent's ReadyCommand carrying the
  exception cannot leave then: the link is already closed (``ClosedChannelException``);
* a refusal before the listeners (the discoverer's Host.OS check) or outside them (the
  ReadyAnswer's details) is the ReadyCommand whose ``_details`` is the exception's text,
  written on the open link;
* async listeners (CleanupNetworkRules, SetHostParams, ModifySshKeys) do not wait: their
  answers are collected on the side and only recorded.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Sequence
from typing import Any, Final, Protocol

from attrs import define, field

from lab.ms.link import AgentLink
from lab.ms.zone import Zone
from lab.ms_side import verdict_for
from lab.ms_side.connect import startup_storage
from lab.ms_side.verdict import HostEffect, MsVerdict
from protocol.messages.host import ReadyCommand, StartupRoutingCommand
from protocol.messages.network import (
    CheckNetworkCommand,
    CleanupNetworkRulesCmd,
    ModifySshKeysCommand,
    SetHostParamsCommand,
)
from protocol.messages.storage import ModifyStoragePoolCommand, StartupStorageCommand
from protocol.model import Command, Message

MODIFY_STORAGE_POOL_WAIT: Final = 300  # DefaultHostListener.modifyStoragePoolCommandWait
CHECK_NETWORK_WAIT: Final = 120  # CheckNetworkCommand's constructor
READY_WAIT: Final = 60  # ready.command.wait
CONNECTION_EXCEPTION: Final = "com.cloud.exception.ConnectionException"
CLOUD_RUNTIME_EXCEPTION: Final = "com.cloud.utils.exception.CloudRuntimeException"
CLEANUP_INTERVAL: Final = 1800  # SecurityGroupListener.MIN_TIME_BETWEEN_CLEANUPS
# LibvirtServerDiscoverer.COMPATIBLE_HOST_OSES: these may share a cluster.
COMPATIBLE_HOST_OSES: Final = frozenset(
    {"Rocky", "Rocky Linux", "Red", "Red Hat Enterprise Linux", "Oracle", "Oracle Linux Server",
     "AlmaLinux"}
)  # fmt: skip


@define
class Step:
    """One command of the sequence: when it left (seconds after the TCP accept), and the
    MS's verdict on its answer (async commands: filled in when the answer comes)."""

    command: str
    wait: int
    sent_after: float
    asynchronous: bool = False
    verdict: MsVerdict | None = None
    took: float | None = None

    def summary(self) -> dict[str, Any]:
        verdict = self.verdict
        return {
            "command": self.command,
            "wait": self.wait,
            "async": self.asynchronous,
            "sent_after_s": round(self.sent_after, 4),
            "took_s": None if self.took is None else round(self.took, 4),
            "ok": None if verdict is None else verdict.ok,
            "reason": None if verdict is None else verdict.reason,
        }


@define
class ConnectRecord:
    """One run of the connect sequence for one startup of a host."""

    guid: str
    host_id: int
    accepted_at: float  # trio time of the TCP accept
    startup_at: float
    steps: list[Step] = field(factory=list)
    outcome: str | None = None  # Up, Alert, Disconnected, refused; None while it runs
    reason: str | None = None
    up_at: float | None = None
    wall_clock: float = field(factory=time.time)

    @property
    def connect_to_up(self) -> float | None:
        """Seconds from the TCP accept to Up."""
        return None if self.up_at is None else self.up_at - self.accepted_at

    def summary(self) -> dict[str, Any]:
        up = self.connect_to_up
        return {
            "guid": self.guid,
            "host_id": self.host_id,
            "outcome": self.outcome,
            "reason": self.reason,
            "connect_to_up_s": None if up is None else round(up, 4),
            "steps": [s.summary() for s in self.steps],
        }


@define
class Failure:
    """How the sequence ended, when not with Up."""

    effect: HostEffect  # ALERT, DISCONNECTED or REFUSED
    reason: str  # the exception's text, as handleConnectedAgent puts it in _details


@define
class PoolHostRef:
    """storage_pool_host_ref, and the pool's capacity as DefaultHostListener updates it."""

    pool_uuid: str
    guid: str
    local_path: str
    capacity_bytes: int
    used_bytes: int


class ConnectServer(Protocol):
    """What the sequence needs from the lab MS."""

    @property
    def zone(self) -> Zone: ...

    def easy_send(self, link: AgentLink, command: Command) -> Awaitable[Message | None]: ...

    def send_with_listener(self, link: AgentLink, command: Command, step: Step) -> Awaitable[None]:
        """Write now; record the answer's verdict in ``step`` when it comes."""
        ...

    def now(self) -> float: ...

    def attach_pool(self, ref: PoolHostRef) -> None: ...


def host_os_refusal(
    startup: StartupRoutingCommand, cluster_os: str | None, cluster_has_host: bool
) -> str | None:
    """LibvirtServerDiscoverer.createHostVOForConnectedAgent: the exception text that
    refuses a host whose Host.OS differs from the cluster's (None: accepted)."""
    if not cluster_has_host:
        return None
    host_os = startup.host_details.get("Host.OS")
    if cluster_os is None:  # hostOsInCluster.equalsIgnoreCase(...) on a null
        return "java.lang.NullPointerException: the cluster's host has no Host.OS"
    if host_os is not None and (
        host_os.lower() == cluster_os.lower()
        or (host_os in COMPATIBLE_HOST_OSES and cluster_os in COMPATIBLE_HOST_OSES)
    ):
        return None
    if host_os is not None and host_os.startswith(cluster_os):
        return None  # "This may or may not be ok!": only a warning
    return (
        f"java.lang.IllegalArgumentException: Can't add host: {startup.private_ip_address} "
        f'with hostOS, "{host_os}"into a cluster, in which there are "{cluster_os}" hosts added.'
    )


async def run_listeners(
    server: ConnectServer,
    link: AgentLink,
    record: ConnectRecord,
    startups: Sequence[Message],
    *,
    host_name: str,
) -> Failure | None:
    """Every connect listener, in order, for each startup command of the request."""
    zone = server.zone
    if not zone.listeners:
        return None
    for startup in startups:
        if isinstance(startup, StartupStorageCommand):
            verdict = startup_storage(startup)  # LocalStoragePoolListener
            record.steps.append(
                Step("StartupStorageCommand", 0, _after(server, record), verdict=verdict)
            )
            if verdict.host_effect is not HostEffect.NONE:
                return Failure(verdict.host_effect, thrown(verdict, record.host_id))
            continue
        if not isinstance(startup, StartupRoutingCommand) or startup.connection_transferred:
            continue
        # SecurityGroupListener: a clean-up every 30 to 45 minutes, asynchronously.
        cleanup = CleanupNetworkRulesCmd(
            interval=CLEANUP_INTERVAL + random.randrange(CLEANUP_INTERVAL // 2)
        )
        await _send_async(server, link, record, cleanup)
        # StoragePoolMonitor -> DefaultHostListener.hostConnect, per shared pool.
        for pool in zone.shared_pools:
            command = ModifyStoragePoolCommand(
                add=True,
                pool=pool.filer(),
                local_path=pool.local_path,
                details=dict(pool.details),
                wait=MODIFY_STORAGE_POOL_WAIT,
            )
            verdict = await _send(server, link, record, command)
            if not verdict.ok:  # StoragePoolMonitor wraps every failure
                return Failure(
                    HostEffect.ALERT,
                    f"{CONNECTION_EXCEPTION}: Unable to connect host {host_name} to storage "
                    f"pool {pool.name} due to {verdict.reason}",
                )
            server.attach_pool(
                PoolHostRef(
                    pool.uuid,
                    record.guid,
                    str(verdict.read["localPath"]),
                    int(verdict.read["capacityBytes"]),
                    int(verdict.read["usedBytes"]),
                )
            )
        # NetworkOrchestrator.processConnect.
        check = CheckNetworkCommand(
            network_info_list=[n.setup_info() for n in zone.physical_networks],
            wait=CHECK_NETWORK_WAIT,
        )
        verdict = await _send(server, link, record, check)
        if not verdict.ok:
            return Failure(verdict.host_effect, thrown(verdict, record.host_id))
        # AgentManagerImpl.SetHostParamsListener and SshKeysDistriMonitor, asynchronously.
        await _send_async(server, link, record, SetHostParamsCommand(params=dict(zone.host_params)))
        keys = ModifySshKeysCommand(pub_key=zone.ssh_public_key, prv_key=zone.ssh_private_key)
        await _send_async(server, link, record, keys)
    return None


async def send_ready(
    server: ConnectServer, link: AgentLink, record: ConnectRecord, ready: ReadyCommand
) -> Failure | None:
    """notifyMonitorsOfConnection's ReadyCommand, after the listeners."""
    verdict = await _send(server, link, record, ready)
    if verdict.ok:
        return None
    return Failure(verdict.host_effect, verdict.reason)


def thrown(verdict: MsVerdict, host_id: int) -> str:
    """The exception notifyMonitorsOfConnection ends with: a listener's
    ConnectionException as it is, anything else (a ClassCastException, a
    NullPointerException) wrapped in "Unable to connect <host id>"."""
    if verdict.reason.startswith(("ClassCastException", "NullPointerException")):
        return f"{CLOUD_RUNTIME_EXCEPTION}: Unable to connect {host_id} ({verdict.reason})"
    return f"{CONNECTION_EXCEPTION}: {verdict.reason}"


def _after(server: ConnectServer, record: ConnectRecord) -> float:
    return server.now() - record.accepted_at


async def _send(
    server: ConnectServer, link: AgentLink, record: ConnectRecord, command: Command
) -> MsVerdict:
    step = Step(command.java_class.rsplit(".", 1)[-1], command.wait, _after(server, record))
    record.steps.append(step)
    started = server.now()
    answer = await server.easy_send(link, command)
    step.took = server.now() - started
    step.verdict = verdict_for(command, answer)
    return step.verdict


async def _send_async(
    server: ConnectServer, link: AgentLink, record: ConnectRecord, command: Command
) -> None:
    step = Step(
        command.java_class.rsplit(".", 1)[-1],
        command.wait,
        _after(server, record),
        asynchronous=True,
    )
    record.steps.append(step)
    await server.send_with_listener(link, command, step)
