"""Host network commands the management server sends from connect to Up (CloudStack 4.21).

Java classes in ``core/src/main/java/com/cloud/agent/api/`` (PhysicalNetworkSetupInfo in
``api/src/main/java/com/cloud/network/``). Answers the MS expects:

* CheckNetworkCommand -> **CheckNetworkAnswer** (NetworkOrchestrator.processConnect casts to
  it; anything else sends the connecting host to Alert);
* SetupPersistentNetworkCommand -> SetupPersistentNetworkAnswer (any answer is read);
* PingTestCommand, CleanupNetworkRulesCmd, ModifySshKeysCommand, SetHostParamsCommand ->
  a plain :class:`~protocol.model.Answer` (the Java agent's; the MS reads ``result`` only,
  or nothing: the last three are sent asynchronously).
"""

from __future__ import annotations

from typing import ClassVar

from attrs import frozen

from protocol.messages.to import NicTO
from protocol.model import Answer, Command, jfield

_API = "com.cloud.agent.api."


@frozen
class PhysicalNetworkSetupInfo:
    """The KVM traffic labels of one physical network; an unset label is absent."""

    physical_network_id: int | None = jfield("physicalNetworkId", default=None)
    private_network_name: str | None = jfield("privateNetworkName", default=None)  # Management
    public_network_name: str | None = jfield("publicNetworkName", default=None)
    guest_network_name: str | None = jfield("guestNetworkName", default=None)
    storage_network_name: str | None = jfield("storageNetworkName", default=None)
    mgmt_vlan: str | None = jfield("mgmtVlan", default=None)


@frozen
class CheckNetworkCommand(Command):
    JAVA_CLASS: ClassVar[str] = _API + "CheckNetworkCommand"
    IN_SEQUENCE: ClassVar[bool] = True

    network_info_list: list[PhysicalNetworkSetupInfo] | None = jfield(
        "networkInfoList", default=None
    )


@frozen
class CheckNetworkAnswer(Answer):
    JAVA_CLASS: ClassVar[str] = _API + "CheckNetworkAnswer"

    # true: the MS disconnects the host ("Reinitialize agent after network setup").
    reconnect: bool = jfield("_reconnect", default=False)


@frozen
class PingTestCommand(Command):
    """Ping a host (``_computingHostIp``) or, through a router, a VM's private IP."""

    JAVA_CLASS: ClassVar[str] = _API + "PingTestCommand"

    computing_host_ip: str | None = jfield("_computingHostIp", default=None)
    router_ip: str | None = jfield("_routerIp", default=None)
    private_ip: str | None = jfield("_privateIp", default=None)


@frozen
class CleanupNetworkRulesCmd(Command):
    """A CronCommand: repeat the security-group rule clean-up every ``interval`` seconds."""

    JAVA_CLASS: ClassVar[str] = _API + "CleanupNetworkRulesCmd"

    interval: int = jfield("interval", default=600)


@frozen
class ModifySshKeysCommand(Command):
    """The keys the agent uses to reach system VMs (global ssh.publickey/ssh.privatekey)."""

    JAVA_CLASS: ClassVar[str] = _API + "ModifySshKeysCommand"

    pub_key: str | None = jfield("_pubKey", default=None, secret=True)
    prv_key: str | None = jfield("_prvKey", default=None, secret=True)


@frozen
class SetHostParamsCommand(Command):
    """migratewait, router.aggregation.command.each.timeout, reconcile.commands.enabled..."""

    JAVA_CLASS: ClassVar[str] = _API + "SetHostParamsCommand"
    IN_SEQUENCE: ClassVar[bool] = True

    params: dict[str, str] | None = jfield("params", default=None)


@frozen
class SetupPersistentNetworkCommand(Command):
    JAVA_CLASS: ClassVar[str] = _API + "SetupPersistentNetworkCommand"

    nic: NicTO | None = jfield("nic", default=None)


@frozen
class SetupPersistentNetworkAnswer(Answer):
    JAVA_CLASS: ClassVar[str] = _API + "SetupPersistentNetworkAnswer"
