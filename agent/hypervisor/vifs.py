"""A VM's NICs on the host's bridges, as CloudStack's BridgeVifDriver puts them there.

The API (also used by migration: PrepareForMigration plugs, the source unplugs after):

* ``await plug_nics(nics, labels) -> list[PluggedNic]``: the bridge of every NIC, creating
  the VLAN bridges that are missing; idempotent. On failure nothing this call created is
  left behind and :class:`VifError` says which NIC, which bridge and what to check.
* ``await unplug_nics(bridges, persistence)``: the VLAN bridges among ``bridges`` that no VM
  uses any more (no ``vnet*`` port) are deleted, unless ``persistence`` (StopCommand's and
  MigrateCommand's ``vlanToPersistenceMap``) keeps them. Label bridges are never deleted.
* ``interface_bridges(domain_xml)``: the bridges a running domain's NICs are on (read
  before stopping or migrating it, to unplug after).

Which bridge (BridgeVifDriver.plug): a Guest or Public NIC whose ``broadcastUri`` is
``vlan://N`` goes on ``br<pif>-<N>``, a bridge holding ``<pif>.<N>``, where ``<pif>`` is the
physical port of the traffic label's bridge (``nic.name``; else the agent's own device for
that traffic); otherwise (untagged, Native) on the label's bridge itself. Management NICs go
on ``private.network.device``, Control NICs on the link-local bridge (cloud0). The pure part
(``plan_nic``, ``vlan_add_commands``, ``vlan_delete_commands``) is what the executor runs:
the ``ip link`` invocations of CloudStack's modifyvlan.sh.

Unlike the Java agent, which maps bridges to ports once at start-up and passes whatever it
finds (``brnull-166``, ``br-166``), this looks at /sys at each plug and refuses a label that
is neither a bridge with an uplink nor an interface, and a name over 15 characters.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import structlog
import trio
from attrs import frozen

from agent.config import AgentConfig
from agent.hypervisor.network import UPLINK
from protocol.messages.enums import BroadcastDomainType, TrafficType
from protocol.messages.to import NicTO

log = structlog.get_logger("agent.vifs")

SYS = Path("/sys")
PROC = Path("/proc")
IP = "ip"
COMMAND_TIMEOUT = 30.0  # each `ip` call; modifyvlan.sh's steps are as quick
IFNAMSIZ = 15  # Linux interface names: 15 characters at most
LINK_LOCAL_BRIDGE = "cloud0"  # the Java agent's private.bridge.name default
DEFAULT_PRIVATE_BRIDGE = "cloudbr1"  # the Java agent's private.network.device default
_BRIDGE_NAME = re.compile(r"^br(\S+)-(\d+)$")  # BridgeVifDriver.deleteVnetBr
_IFNAME = re.compile(r"[^/\s:]{1,15}")
_VLAN_TYPES = (BroadcastDomainType.VLAN, BroadcastDomainType.VXLAN, BroadcastDomainType.NETRIS)


class VifError(Exception):
    """A NIC could not be put on (or taken off) its bridge; the text says which and why."""


@frozen
class TrafficLabels:
    """The agent's own bridges, used when a NIC carries no traffic label (``nic.name``)."""

    public: str = "cloudbr0"  # public.network.device
    private: str = DEFAULT_PRIVATE_BRIDGE  # private.network.device (Management NICs)
    guest: str = ""  # guest.network.device; empty: the private one
    link_local: str = LINK_LOCAL_BRIDGE  # Control NICs of system VMs

    @property
    def guest_bridge(self) -> str:
        return self.guest or self.private

    @classmethod
    def from_config(cls, config: AgentConfig) -> TrafficLabels:
        """public/private/guest.network.device; an empty private device is the Java default
        (cloudbr1): here that key also names the interface of the host's private IP."""
        return cls(
            public=config.public_network_device or "cloudbr0",
            private=config.private_network_device or DEFAULT_PRIVATE_BRIDGE,
            guest=config.guest_network_device,
        )


@frozen
class VlanBridge:
    """``br<pif>-<vlan>`` holding ``<pif>.<vlan>``: modifyvlan.sh's names."""

    vlan: int
    pif: str

    @property
    def device(self) -> str:
        return f"{self.pif}.{self.vlan}"

    @property
    def bridge(self) -> str:
        return f"br{self.pif}-{self.vlan}"


@frozen
class NicPlan:
    """Where one NIC goes: ``bridge``, made of ``vlan`` when that is set."""

    device_id: int
    mac: str | None
    bridge: str
    vlan: VlanBridge | None = None


@frozen
class PluggedNic:
    """A NIC on its bridge. ``created``: this plug made the VLAN bridge (so a failed start
    may take it away again)."""

    device_id: int
    mac: str | None
    bridge: str
    vlan: VlanBridge | None
    created: bool


# --- planning (pure) -------------------------------------------------------------------


def vnet_id(uri: str | None) -> str | None:
    """BroadcastDomainType.getValue: ``vlan://166`` -> ``166``; ``None`` without a URI."""
    if not uri:
        return None
    _, sep, rest = uri.partition("://")
    return rest.split("/", 1)[0] if sep else uri


def _scheme(uri: str | None) -> str | None:
    if not uri or "://" not in uri:
        return None
    return uri.split("://", 1)[0].lower()


def _where(nic: NicTO) -> str:
    kind = nic.type.value if nic.type else "untyped"
    return f"{kind} NIC {nic.device_id} (mac {nic.mac or 'unset'})"


def plan_nic(nic: NicTO, labels: TrafficLabels, pif_of: Mapping[str, str]) -> NicPlan:
    """The bridge for ``nic``. ``pif_of``: label -> its physical port (see :func:`pifs`),
    needed only for VLAN NICs. Raises VifError for what cannot be plugged."""
    label = nic.name or None
    tagged = None
    if nic.broadcast_type in _VLAN_TYPES and nic.type in (TrafficType.GUEST, TrafficType.PUBLIC):
        value = vnet_id(nic.broadcast_uri)
        if value is not None and value.lower() != "untagged":
            tagged = value
    if nic.type is TrafficType.STORAGE and nic.broadcast_type is BroadcastDomainType.STORAGE:
        value = vnet_id(nic.broadcast_uri)
        if value is not None and value.lower() != "untagged":
            tagged = value
    if nic.broadcast_type is BroadcastDomainType.LSWITCH:
        raise VifError(f"{_where(nic)}: Nicira NVP logical switches are not supported by bridges")

    if nic.type is TrafficType.CONTROL:
        bridge = labels.link_local
    elif nic.type is TrafficType.MANAGEMENT:
        bridge = labels.private
    elif nic.type is TrafficType.PUBLIC:
        # Untagged public traffic ignores the label, as the Java agent does.
        bridge = (label or "public") if tagged else labels.public
    elif nic.type is TrafficType.STORAGE:
        bridge = label or labels.private
    elif nic.type is TrafficType.GUEST:
        bridge = label or (labels.private if tagged else labels.guest_bridge)
    else:
        raise VifError(f"{_where(nic)}: traffic type unset or not plugged by this agent")

    if tagged is None:
        _check_name(bridge, nic)
        return NicPlan(nic.device_id, nic.mac, bridge)

    if _scheme(nic.broadcast_uri) in ("vxlan", "netris"):
        raise VifError(f"{_where(nic)}: VXLAN networks ({nic.broadcast_uri}) are not supported")
    if not tagged.isdigit() or not 1 <= int(tagged) <= 4094:
        raise VifError(
            f"{_where(nic)}: broadcastUri {nic.broadcast_uri!r} names no VLAN id from 1 to 4094"
        )
    parent = labels.public if bridge == "public" else bridge
    pif = pif_of.get(parent)
    if not pif:
        raise VifError(
            f"{_where(nic)}: traffic label {parent!r} is neither a bridge with a physical "
            "port nor an interface on this host, so VLAN "
            f"{tagged} has no parent; check the zone's KVM traffic label and the host's bridges"
        )
    vlan = VlanBridge(int(tagged), pif)
    for name in (vlan.device, vlan.bridge):
        if len(name) > IFNAMSIZ:
            raise VifError(
                f"{_where(nic)}: interface name {name!r} for VLAN {tagged} on {pif} is longer "
                f"than Linux's {IFNAMSIZ} characters; use a shorter physical interface name"
            )
    return NicPlan(nic.device_id, nic.mac, vlan.bridge, vlan)


def _check_name(bridge: str, nic: NicTO) -> None:
    if not _IFNAME.fullmatch(bridge) or bridge in (".", ".."):
        raise VifError(f"{_where(nic)}: bridge name {bridge!r} is not a valid interface name")


def vlan_add_commands(
    vlan: VlanBridge, *, have_device: bool, have_bridge: bool, enslaved: bool
) -> list[list[str]]:
    """modifyvlan.sh -o add, the steps still needed given what exists."""
    steps: list[list[str]] = []
    if not have_device:
        vlan_id = ["type", "vlan", "id", str(vlan.vlan)]
        steps.append([IP, "link", "add", "link", vlan.pif, "name", vlan.device, *vlan_id])
    steps.append([IP, "link", "set", vlan.device, "up"])
    if not have_bridge:
        steps.append([IP, "link", "add", "name", vlan.bridge, "type", "bridge"])
    if not enslaved:
        steps.append([IP, "link", "set", vlan.device, "master", vlan.bridge])
    steps.append([IP, "link", "set", vlan.bridge, "up"])
    return steps


def vlan_delete_commands(vlan: VlanBridge) -> list[list[str]]:
    """modifyvlan.sh -o delete -d true."""
    return [
        [IP, "link", "delete", vlan.device, "type", "vlan"],
        [IP, "link", "set", vlan.bridge, "down"],
        [IP, "link", "delete", vlan.bridge, "type", "bridge"],
    ]


def vlan_of_bridge(bridge: str) -> VlanBridge | None:
    """``breth1-166`` -> VLAN 166 on eth1; None for any other name (label bridges)."""
    found = _BRIDGE_NAME.match(bridge)
    if found is None:
        return None
    return VlanBridge(int(found.group(2)), found.group(1))


def should_delete(bridge: str, persistence: Mapping[str, bool] | None) -> bool:
    """LibvirtComputingResource.shouldDeleteBridge: the map's value for the bridge's VLAN,
    true when absent."""
    vlan = vlan_of_bridge(bridge)
    if vlan is None:
        return False
    return bool((persistence or {}).get(str(vlan.vlan), True))


def interface_bridges(domain_xml: str) -> list[str]:
    """The bridges of a domain's ``<interface type='bridge'>`` elements, in order."""
    root = ET.fromstring(domain_xml)
    found: list[str] = []
    for iface in root.iterfind("./devices/interface"):
        source = iface.find("source")
        if iface.get("type") == "bridge" and source is not None and source.get("bridge"):
            found.append(source.get("bridge", ""))
    return found


# --- the host (/sys, /proc) ----------------------------------------------------------------


def pif_of(label: str, sys_root: Path = SYS, proc_root: Path = PROC) -> str | None:
    """BridgeVifDriver.getPif: a bridge's first uplink port (a VLAN port's parent), or the
    label itself when it is an interface and no bridge; None when neither."""
    ports_dir = sys_root / "devices" / "virtual" / "net" / label / "brif"
    if not ports_dir.is_dir():
        return label if (sys_root / "class" / "net" / label).is_dir() else None
    for port in sorted(p.name for p in ports_dir.iterdir()):
        if UPLINK.match(port):
            vlan_file = proc_root / "net" / "vlan" / port
            if vlan_file.is_file():
                for line in vlan_file.read_text(errors="replace").splitlines():
                    if line.startswith("Device:"):
                        return line.split()[1]
            return port
    return None


def pifs(labels: Iterable[str], sys_root: Path = SYS, proc_root: Path = PROC) -> dict[str, str]:
    found: dict[str, str] = {}
    for label in labels:
        pif = pif_of(label, sys_root, proc_root)
        if pif:
            found[label] = pif
    return found


def _exists(name: str, sys_root: Path) -> bool:
    return (sys_root / "class" / "net" / name).exists()


def _ports(bridge: str, sys_root: Path) -> list[str]:
    ports_dir = sys_root / "class" / "net" / bridge / "brif"
    return sorted(p.name for p in ports_dir.iterdir()) if ports_dir.is_dir() else []


def _disable_ipv6(name: str, proc_root: Path) -> None:
    # modifyvlan.sh: a VLAN device and its bridge carry no IPv6 of their own.
    knob = proc_root / "sys" / "net" / "ipv6" / "conf" / name / "disable_ipv6"
    try:
        knob.write_text("1\n")
    except OSError:
        pass  # no IPv6 on this host


# --- the executor ----------------------------------------------------------------------------

_lock = trio.Lock()  # one VLAN change at a time, as the Java driver's monitor


async def _run(argv: Sequence[str], what: str) -> None:
    try:
        with trio.fail_after(COMMAND_TIMEOUT):
            done = await trio.run_process(
                list(argv), capture_stdout=True, capture_stderr=True, check=False
            )
    except trio.TooSlowError:
        raise VifError(
            f"{what}: `{' '.join(argv)}` did not finish within {COMMAND_TIMEOUT:g}s"
        ) from None
    except OSError as exc:
        raise VifError(
            f"{what}: cannot run `{argv[0]}`: {exc.strerror} (is iproute2 installed?)"
        ) from None
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip()[-300:]
        raise VifError(f"{what}: `{' '.join(argv)}` failed: {err or f'exit {done.returncode}'}")


async def _ensure_vlan(vlan: VlanBridge, nic: str, sys_root: Path, proc_root: Path) -> bool:
    """Create what is missing of ``vlan``; True when the bridge was made here."""
    have_bridge = _exists(vlan.bridge, sys_root)
    have_device = _exists(vlan.device, sys_root)
    enslaved = vlan.device in _ports(vlan.bridge, sys_root)
    what = f"{nic}: creating VLAN {vlan.vlan} bridge {vlan.bridge} on {vlan.pif}"
    if not have_device and not (proc_root / "net" / "vlan").is_dir():
        await _run(["modprobe", "8021q"], what + " (no 802.1Q support: modprobe 8021q)")
    steps = vlan_add_commands(
        vlan, have_device=have_device, have_bridge=have_bridge, enslaved=enslaved
    )
    for argv in steps:
        await _run(argv, what)
    for name in (vlan.device, vlan.bridge):
        _disable_ipv6(name, proc_root)
    return not have_bridge


async def plug_nics(
    nics: Sequence[NicTO],
    labels: TrafficLabels,
    *,
    sys_root: Path = SYS,
    proc_root: Path = PROC,
) -> list[PluggedNic]:
    """Every NIC's bridge, in ``deviceId`` order, made where missing; see the module doc."""
    ordered = sorted(nics, key=lambda n: n.device_id)
    parents = {n.name or "" for n in ordered} | {labels.public, labels.private}
    found = await trio.to_thread.run_sync(
        pifs, sorted(p for p in parents if p), sys_root, proc_root
    )
    plans = [plan_nic(nic, labels, found) for nic in ordered]  # all checked before any change
    plugged: list[PluggedNic] = []
    try:
        async with _lock:
            for nic, plan in zip(ordered, plans, strict=True):
                created = False
                if plan.vlan is not None:
                    created = await _ensure_vlan(plan.vlan, _where(nic), sys_root, proc_root)
                elif not _exists(plan.bridge, sys_root):
                    raise VifError(
                        f"{_where(nic)}: bridge {plan.bridge!r} does not exist on this host; "
                        "check the zone's KVM traffic label for this traffic and the host's "
                        "bridges (ip link show type bridge)"
                    )
                plugged.append(
                    PluggedNic(plan.device_id, plan.mac, plan.bridge, plan.vlan, created)
                )
    except BaseException:
        with trio.CancelScope(shield=True):
            await unplug_nics([p.bridge for p in plugged if p.created], sys_root=sys_root)
        raise
    made = [p.bridge for p in plugged if p.created]
    log.info("nics plugged", bridges=[p.bridge for p in plugged], created=made)
    return plugged


async def unplug_nics(
    bridges: Iterable[str],
    persistence: Mapping[str, bool] | None = None,
    *,
    sys_root: Path = SYS,
) -> list[str]:
    """Delete the VLAN bridges among ``bridges`` no VM uses any more; returns those deleted.
    A failure is logged, not raised: the VM is already gone, and a bridge left behind is
    harmless (the next plug of that VLAN finds it)."""
    removed: list[str] = []
    async with _lock:
        for bridge in dict.fromkeys(bridges):
            vlan = vlan_of_bridge(bridge)
            if vlan is None or not should_delete(bridge, persistence):
                continue
            if not _exists(bridge, sys_root):
                continue
            if any("vnet" in port for port in _ports(bridge, sys_root)):
                continue  # another VM's tap is still on it
            try:
                for argv in vlan_delete_commands(vlan):
                    if argv[2] == "delete" and not _exists(argv[3], sys_root):
                        continue
                    await _run(argv, f"deleting VLAN bridge {bridge}")
            except VifError as exc:
                log.warning("VLAN bridge left in place", bridge=bridge, error=str(exc))
                continue
            removed.append(bridge)
    if removed:
        log.info("VLAN bridges deleted", bridges=removed)
    return removed
