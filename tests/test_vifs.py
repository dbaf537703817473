"""NIC plugging (agent.hypervisor.vifs): bridge names and `ip` invocations as BridgeVifDriver
and modifyvlan.sh make them; the executor against a /sys tree and a recording `ip`.

This kernel has no 802.1Q, so VLAN devices cannot be made here: the executor test runs an
`ip` that records its arguments and makes the /sys entries a real one would.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import trio

from agent.hypervisor import vifs
from agent.hypervisor.vifs import TrafficLabels, VifError, VlanBridge
from protocol.messages.enums import BroadcastDomainType, TrafficType
from protocol.messages.to import NicTO

LABELS = TrafficLabels(public="cloudbr0", private="cloudbr1")
PIFS = {"cloudbr0": "eth0", "cloudbr1": "eth1"}


def guest(uri: str | None, label: str | None = "cloudbr1", device: int = 0) -> NicTO:
    kind = (
        BroadcastDomainType.VLAN if uri and uri.startswith("vlan") else BroadcastDomainType.NATIVE
    )
    return NicTO(
        device_id=device,
        mac=f"02:00:00:00:00:{device:02x}",
        type=TrafficType.GUEST,
        broadcast_type=kind,
        broadcast_uri=uri,
        name=label,
    )


def test_vlan_200_goes_on_br_pif_200() -> None:
    plan = vifs.plan_nic(guest("vlan://200"), LABELS, PIFS)
    assert plan.bridge == "breth1-200"
    assert plan.vlan == VlanBridge(200, "eth1")
    assert plan.vlan.device == "eth1.200"


def test_vlan_add_commands_are_modifyvlans() -> None:
    vlan = VlanBridge(200, "eth1")
    steps = vifs.vlan_add_commands(vlan, have_device=False, have_bridge=False, enslaved=False)
    assert steps == [
        ["ip", "link", "add", "link", "eth1", "name", "eth1.200", "type", "vlan", "id", "200"],
        ["ip", "link", "set", "eth1.200", "up"],
        ["ip", "link", "add", "name", "breth1-200", "type", "bridge"],
        ["ip", "link", "set", "eth1.200", "master", "breth1-200"],
        ["ip", "link", "set", "breth1-200", "up"],
    ]
    # Idempotent: with everything there, only the `up`s remain.
    again = vifs.vlan_add_commands(vlan, have_device=True, have_bridge=True, enslaved=True)
    assert again == [
        ["ip", "link", "set", "eth1.200", "up"],
        ["ip", "link", "set", "breth1-200", "up"],
    ]
    assert vifs.vlan_delete_commands(vlan) == [
        ["ip", "link", "delete", "eth1.200", "type", "vlan"],
        ["ip", "link", "set", "breth1-200", "down"],
        ["ip", "link", "delete", "breth1-200", "type", "bridge"],
    ]


def test_untagged_and_native_use_the_label_bridge() -> None:
    assert vifs.plan_nic(guest("vlan://untagged"), LABELS, PIFS).bridge == "cloudbr1"
    assert vifs.plan_nic(guest(None, label="cloudbr0"), LABELS, PIFS).bridge == "cloudbr0"
    plan = vifs.plan_nic(
        guest(None, label=None), TrafficLabels(private="cloudbr1", guest="brg"), {}
    )
    assert plan.bridge == "brg" and plan.vlan is None


def test_vlan_without_label_uses_the_private_bridge_port() -> None:
    assert vifs.plan_nic(guest("vlan://7", label=None), LABELS, PIFS).bridge == "breth1-7"


def test_public_management_control_bridges() -> None:
    public = NicTO(
        type=TrafficType.PUBLIC,
        broadcast_type=BroadcastDomainType.VLAN,
        broadcast_uri="vlan://untagged",
        name="cloudbr1",
    )
    # Untagged public traffic: public.network.device, the label ignored (as Java).
    assert vifs.plan_nic(public, LABELS, PIFS).bridge == "cloudbr0"
    tagged = NicTO(
        type=TrafficType.PUBLIC,
        broadcast_type=BroadcastDomainType.VLAN,
        broadcast_uri="vlan://30",
        name=None,
    )
    assert vifs.plan_nic(tagged, LABELS, PIFS).bridge == "breth0-30"
    mgmt = NicTO(type=TrafficType.MANAGEMENT, name="whatever")
    assert vifs.plan_nic(mgmt, LABELS, PIFS).bridge == "cloudbr1"
    control = NicTO(type=TrafficType.CONTROL)
    assert vifs.plan_nic(control, LABELS, PIFS).bridge == "cloud0"


@pytest.mark.parametrize(
    ("nic", "pifs", "words"),
    [
        (guest("vlan://200", label="nosuch"), PIFS, "'nosuch' is neither a bridge"),
        (guest("vlan://4095"), PIFS, "no VLAN id from 1 to 4094"),
        (guest("vlan://abc"), PIFS, "no VLAN id"),
        (guest("vlan://4000"), {"cloudbr1": "enp129s0f0"}, "longer than Linux's 15"),
        (guest("vxlan://5000"), PIFS, "VXLAN"),
        (guest(None, label="bad/name"), PIFS, "not a valid interface name"),
    ],
)
def test_refusals_name_the_nic_and_the_fix(nic: NicTO, pifs: dict[str, str], words: str) -> None:
    if nic.broadcast_uri and nic.broadcast_uri.startswith("vxlan"):
        nic = NicTO(
            type=TrafficType.GUEST,
            broadcast_type=BroadcastDomainType.VXLAN,
            broadcast_uri=nic.broadcast_uri,
            name="cloudbr1",
            mac=nic.mac,
        )
    with pytest.raises(VifError, match=words) as info:
        vifs.plan_nic(nic, LABELS, pifs)
    assert "NIC 0" in str(info.value)


def test_bridge_names_and_persistence() -> None:
    assert vifs.vlan_of_bridge("breth1-166") == VlanBridge(166, "eth1")
    assert vifs.vlan_of_bridge("cloudbr1") is None
    assert vifs.should_delete("breth1-166", None)
    assert vifs.should_delete("breth1-166", {"200": False})
    assert not vifs.should_delete("breth1-166", {"166": False})
    assert not vifs.should_delete("cloudbr0", None)  # label bridges are never deleted


def test_interface_bridges_of_a_domain() -> None:
    xml = """<domain><devices>
      <interface type='bridge'><source bridge='cloudbr0'/></interface>
      <interface type='network'><source network='default'/></interface>
      <interface type='bridge'><source bridge='breth1-200'/></interface>
    </devices></domain>"""
    assert vifs.interface_bridges(xml) == ["cloudbr0", "breth1-200"]


def _bridge(sys_root: Path, name: str, ports: list[str]) -> None:
    brif = sys_root / "devices" / "virtual" / "net" / name / "brif"
    brif.mkdir(parents=True)
    (sys_root / "class" / "net").mkdir(parents=True, exist_ok=True)
    (sys_root / "class" / "net" / name).symlink_to(brif.parent)
    for port in ports:
        (brif / port).mkdir()
        (sys_root / "class" / "net" / port).mkdir(exist_ok=True)


def test_pif_of_bridge_vlan_port_and_plain_interface(tmp_path: Path) -> None:
    sys_root, proc = tmp_path / "sys", tmp_path / "proc"
    _bridge(sys_root, "cloudbr0", ["vnet3", "eth0"])
    _bridge(sys_root, "cloudbr1", ["bond0.100"])
    _bridge(sys_root, "brtaps", ["vnet0"])
    (proc / "net" / "vlan").mkdir(parents=True)
    (proc / "net" / "vlan" / "bond0.100").write_text("bond0.100  VID: 100\nDevice: bond0\n")
    (sys_root / "class" / "net" / "eth7").mkdir()
    assert vifs.pif_of("cloudbr0", sys_root, proc) == "eth0"
    assert vifs.pif_of("cloudbr1", sys_root, proc) == "bond0"
    assert vifs.pif_of("eth7", sys_root, proc) == "eth7"
    assert vifs.pif_of("brtaps", sys_root, proc) is None
    assert vifs.pif_of("nosuch", sys_root, proc) is None


RECORDING_IP = """#!/bin/sh
# Records its arguments; makes the /sys entries a real `ip` would.
echo "$*" >> "{log}"
S="{sys}"
case "$*" in
  "link add link "*) mkdir -p "$S/class/net/$6" ;;
  "link add name "*) D="$S/devices/virtual/net/$4"; mkdir -p "$D/brif"; ln -s "$D" "$S/class/net" ;;
  *" master "*) mkdir -p "$S/class/net/$5/brif/$3" ;;
  "link delete "*" type bridge") rm -rf "$S/class/net/$3" "$S/devices/virtual/net/$3" ;;
  "link delete "*) rm -rf "$S/class/net/$3" ;;
esac
"""


def _recording_ip(tmp_path: Path, sys_root: Path) -> Path:
    script = tmp_path / "ip"
    log = tmp_path / "ip.log"
    script.write_text(RECORDING_IP.format(log=log, sys=sys_root))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return log


async def test_plug_creates_once_unplug_deletes_unused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sys_root, proc = tmp_path / "sys", tmp_path / "proc"
    _bridge(sys_root, "cloudbr1", ["eth1"])
    (proc / "net" / "vlan").mkdir(parents=True)
    log = _recording_ip(tmp_path, sys_root)
    monkeypatch.setattr(vifs, "IP", str(tmp_path / "ip"))
    nics = [guest("vlan://200", device=1), guest("vlan://untagged", device=0)]

    plugged = await vifs.plug_nics(nics, LABELS, sys_root=sys_root, proc_root=proc)
    assert [(p.device_id, p.bridge, p.created) for p in plugged] == [
        (0, "cloudbr1", False),
        (1, "breth1-200", True),
    ]
    first = log.read_text().splitlines()
    assert first[0] == "link add link eth1 name eth1.200 type vlan id 200"
    assert "link add name breth1-200 type bridge" in first
    assert "link set eth1.200 master breth1-200" in first

    again = await vifs.plug_nics(nics, LABELS, sys_root=sys_root, proc_root=proc)
    assert [p.created for p in again] == [False, False]
    assert not any(" add " in line for line in log.read_text().splitlines()[len(first) :]), (
        log.read_text()
    )

    # A VM's tap still on the bridge: kept.
    (sys_root / "class" / "net" / "breth1-200" / "brif" / "vnet4").mkdir()
    assert await vifs.unplug_nics(["breth1-200", "cloudbr1"], sys_root=sys_root) == []
    (sys_root / "class" / "net" / "breth1-200" / "brif" / "vnet4").rmdir()
    # The MS says the VLAN is persistent: kept.
    assert await vifs.unplug_nics(["breth1-200"], {"200": False}, sys_root=sys_root) == []
    assert await vifs.unplug_nics(["breth1-200", "cloudbr1"], sys_root=sys_root) == ["breth1-200"]
    assert not (sys_root / "class" / "net" / "breth1-200").exists()
    assert (sys_root / "class" / "net" / "cloudbr1").exists()


async def test_failed_plug_leaves_nothing_it_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sys_root, proc = tmp_path / "sys", tmp_path / "proc"
    _bridge(sys_root, "cloudbr1", ["eth1"])
    (proc / "net" / "vlan").mkdir(parents=True)
    _recording_ip(tmp_path, sys_root)
    monkeypatch.setattr(vifs, "IP", str(tmp_path / "ip"))
    nics = [guest("vlan://200", device=0), guest(None, label="cloudbr9", device=1)]
    with pytest.raises(VifError, match="bridge 'cloudbr9' does not exist on this host"):
        await vifs.plug_nics(nics, LABELS, sys_root=sys_root, proc_root=proc)
    assert not (sys_root / "class" / "net" / "breth1-200").exists()
    assert not (sys_root / "class" / "net" / "eth1.200").exists()


async def test_ip_failure_and_timeout_are_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sys_root, proc = tmp_path / "sys", tmp_path / "proc"
    _bridge(sys_root, "cloudbr1", ["eth1"])
    (proc / "net" / "vlan").mkdir(parents=True)
    failing = tmp_path / "failing-ip"
    failing.write_text("#!/bin/sh\necho 'RTNETLINK answers: Operation not supported' >&2\nexit 2\n")
    failing.chmod(0o755)
    monkeypatch.setattr(vifs, "IP", str(failing))
    with pytest.raises(
        VifError, match=r"VLAN 200 bridge breth1-200 on eth1.*Operation not supported"
    ):
        await vifs.plug_nics([guest("vlan://200")], LABELS, sys_root=sys_root, proc_root=proc)
    slow = tmp_path / "slow-ip"
    slow.write_text("#!/bin/sh\nexec sleep 30\n")
    slow.chmod(0o755)
    monkeypatch.setattr(vifs, "IP", str(slow))
    monkeypatch.setattr(vifs, "COMMAND_TIMEOUT", 0.2)
    with trio.fail_after(10), pytest.raises(VifError, match=r"did not finish within 0\.2s"):
        await vifs.plug_nics([guest("vlan://200")], LABELS, sys_root=sys_root, proc_root=proc)


def test_labels_from_agent_properties() -> None:
    from agent.config import AgentConfig

    config = AgentConfig.from_properties({"guid": "x", "guest.network.device": "brguest"})
    labels = TrafficLabels.from_config(config)
    assert (labels.public, labels.private, labels.guest_bridge) == (
        "cloudbr0",
        "cloudbr1",
        "brguest",
    )
    config = AgentConfig.from_properties({"guid": "x", "private.network.device": "cloudbr0"})
    assert TrafficLabels.from_config(config).guest_bridge == "cloudbr0"
