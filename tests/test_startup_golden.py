"""The StartupRoutingCommand this agent sends, field by field against the Java classes.

``JAVA_FIELDS`` is written by hand from CloudStack's sources (4.21 / main):

* ``api/src/main/java/com/cloud/agent/api/Command.java``: contextMap, wait,
  bypassHostMaintenance, externalDetails;
* ``core/src/main/java/com/cloud/agent/api/StartupCommand.java``: type ... arch;
* ``core/src/main/java/com/cloud/agent/api/StartupRoutingCommand.java``: cpuSockets ...
  hostHealthCheckResult;

and which of them the Java KVM agent always fills, from
``plugins/hypervisors/kvm/src/main/java/com/cloud/hypervisor/kvm/resource/LibvirtComputingResource.java``
(``initialize``), ``core/src/main/java/com/cloud/resource/ServerResourceBase.java``
(``fillNetworkInformation``) and ``agent/src/main/java/com/cloud/agent/Agent.java``
(``setupStartupCommand``, ``sendStartup``). Gson writes Java field names verbatim and leaves
null fields out; a primitive (int, long, boolean) is always written.

A field renamed, dropped or added on our side, or written with another JSON type, fails here.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from protocol.codec import encode_messages
from protocol.messages.host import StartupRoutingCommand
from tests.agent_env import agent_config, agent_dir, guid_of, running_agent, running_ms

ALWAYS, MAYBE = "always", "maybe"  # filled by the KVM agent / null (left out) at times

# wire name -> (JSON type, presence)
JAVA_FIELDS: dict[str, tuple[type, str]] = {
    # StartupRoutingCommand
    "cpuSockets": (int, ALWAYS),  # Integer; KVMHostInfo: sockets x NUMA nodes
    "cpus": (int, ALWAYS),
    "speed": (int, ALWAYS),  # long, MHz
    "memory": (int, ALWAYS),  # long, bytes: MemTotal - host.reserved.mem.mb
    "dom0MinMemory": (int, ALWAYS),  # long, bytes: host.reserved.mem.mb
    "poolSync": (bool, ALWAYS),
    "supportsClonedVolumes": (bool, ALWAYS),
    "caps": (str, ALWAYS),
    "pool": (str, ALWAYS),  # "/root" unless agent.properties says otherwise
    "hypervisorType": (str, ALWAYS),  # HypervisorType, by name
    "hostDetails": (dict, ALWAYS),  # Map<String, String>
    "hostTags": (list, ALWAYS),  # List<String>, initialised empty
    "hypervisorVersion": (str, MAYBE),  # the KVM agent never sets it
    "groupDetails": (dict, ALWAYS),  # HashMap, initialised empty
    "hostHealthCheckResult": (bool, MAYBE),  # Boolean
    # StartupCommand
    "type": (str, ALWAYS),  # Host.Type, by name
    "dataCenter": (str, ALWAYS),
    "pod": (str, ALWAYS),
    "cluster": (str, ALWAYS),
    "guid": (str, ALWAYS),
    "name": (str, ALWAYS),
    "id": (int, MAYBE),  # Long: null until the MS assigned one
    "version": (str, ALWAYS),
    "iqn": (str, MAYBE),  # from /etc/iscsi/initiatorname.iscsi
    "publicIpAddress": (str, ALWAYS),
    "publicNetmask": (str, ALWAYS),
    "publicMacAddress": (str, ALWAYS),
    "privateIpAddress": (str, ALWAYS),
    "privateMacAddress": (str, ALWAYS),
    "privateNetmask": (str, ALWAYS),
    "storageIpAddress": (str, ALWAYS),
    "storageNetmask": (str, ALWAYS),
    "storageMacAddress": (str, ALWAYS),
    "storageIpAddressDeux": (str, MAYBE),
    "storageMacAddressDeux": (str, MAYBE),
    "storageNetmaskDeux": (str, MAYBE),
    "agentTag": (str, MAYBE),
    "resourceName": (str, ALWAYS),
    "gatewayIpAddress": (str, MAYBE),  # the default route's gateway, when there is one
    "msHostList": (str, ALWAYS),
    "connectionTransferred": (bool, ALWAYS),
    "arch": (str, ALWAYS),
    # Command
    "contextMap": (dict, ALWAYS),
    "wait": (int, ALWAYS),
    "bypassHostMaintenance": (bool, ALWAYS),
    "externalDetails": (dict, MAYBE),
}

# hostDetails keys the KVM agent always sends (LibvirtComputingResource.initialize, its
# versions.sh, KeyStoreUtils.SECURED, Host.HOST_VOLUME_ENCRYPTION, and the constructor
# StartupRoutingCommand(..., RouterPrivateIpStrategy.HostLocal)).
HOST_DETAILS = {
    "Host.OS",
    "Host.OS.Version",
    "Host.OS.Kernel.Version",
    "secured",
    "host.volume.encryption",
    "com.cloud.network.Networks.RouterPrivateIpStrategy",
}


def _json_type(value: Any) -> type:
    return bool if isinstance(value, bool) else type(value)


async def _startup_on_this_machine(tmp_path: Path, **overrides: str) -> dict[str, Any]:
    """The agent's real StartupRoutingCommand (test:///default), as written on the wire."""
    async with running_ms(tmp_path, ping_interval=60) as ms:
        config = agent_config(
            tmp_path, f"127.0.0.1:{ms.port}", agent_dir(tmp_path, ms.ca), **overrides
        )
        async with running_agent(config):
            _guid, request = await ms.wait_for_request(
                lambda _g, r: isinstance(r.commands[0], StartupRoutingCommand), timeout=10
            )
            await ms.wait_for_host(guid_of("agent1"), timeout=10)
    (item,) = json.loads(encode_messages(request.commands))
    ((name, fields),) = item.items()
    assert name == "com.cloud.agent.api.StartupRoutingCommand"
    return dict(fields)


def _default_gateway() -> str | None:
    """From iproute2, not from the agent's own reading of /proc/net/route."""
    out = subprocess.run(
        ["ip", "-4", "route", "show", "default"], capture_output=True, text=True, check=False
    ).stdout.split()
    return out[out.index("via") + 1] if "via" in out else None


def _mem_total() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no MemTotal in /proc/meminfo")


async def test_golden_startup_fields_and_types(tmp_path: Path) -> None:
    fields = await _startup_on_this_machine(tmp_path)
    unknown = sorted(set(fields) - set(JAVA_FIELDS))
    assert not unknown, f"fields the Java class does not have: {unknown}"
    missing = sorted(k for k, (_, how) in JAVA_FIELDS.items() if how == ALWAYS and k not in fields)
    assert not missing, f"fields the Java KVM agent always sends: {missing}"
    wrong = {
        k: (_json_type(v).__name__, JAVA_FIELDS[k][0].__name__)
        for k, v in fields.items()
        if _json_type(v) is not JAVA_FIELDS[k][0]
    }
    assert not wrong, f"JSON types (ours, Java's): {wrong}"

    details = fields["hostDetails"]
    assert set(details) >= HOST_DETAILS, sorted(HOST_DETAILS - set(details))
    assert all(isinstance(v, str) and v for v in details.values()), details
    assert details["com.cloud.network.Networks.RouterPrivateIpStrategy"] == "HostLocal"
    assert details["Host.OS.Kernel.Version"] == os.uname().release
    assert details["secured"] in ("true", "false")
    assert "hypervisorVersion" not in fields  # guest OS mappings of KVM are "default"

    reserved = 1024 * 1024 * 1024  # host.reserved.mem.mb's default, in bytes
    assert fields["dom0MinMemory"] == reserved
    assert fields["memory"] == _mem_total() - reserved
    assert fields.get("gatewayIpAddress") == _default_gateway()
    iqn_file = Path("/etc/iscsi/initiatorname.iscsi")
    assert ("iqn" in fields) == (iqn_file.exists() and "InitiatorName=" in iqn_file.read_text())
    assert (fields["type"], fields["hypervisorType"]) == ("Routing", "KVM")
    assert fields["pool"] == "/root" and fields["arch"] == os.uname().machine
    assert fields["groupDetails"] == {} and fields["hostTags"] == []
    assert fields["storageIpAddress"] == fields["privateIpAddress"]


async def test_host_reserved_memory_is_sent_in_bytes(tmp_path: Path) -> None:
    fields = await _startup_on_this_machine(tmp_path, **{"host.reserved.mem.mb": "512"})
    assert fields["dom0MinMemory"] == 512 * 1024 * 1024
    assert fields["memory"] == _mem_total() - 512 * 1024 * 1024
