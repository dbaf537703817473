"""The host's zone commands on the two-host lab: real bridges, real pings between the hosts,
a real QEMU VM with VNC, a real migration bounded by the MS's migration wait, and the ping's
VM report while libvirtd goes away and comes back. Each answer is judged as the 4.21 MS would
(lab.ms_side.verdict_for).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from lab.ca import LAB_CA_DIRNAME, LabCA
from lab.cloud import LabCloud as Cloud
from lab.guest import domain_xml
from lab.hosts import Lab
from lab.mgmt import ManagementServer
from lab.ms_side import HostEffect, verdict_for
from protocol.codec import decode_array
from protocol.messages.host import PingRoutingCommand, PowerState
from protocol.messages.migration import MigrateAnswer
from protocol.messages.network import (
    CheckNetworkAnswer,
    CheckNetworkCommand,
    PhysicalNetworkSetupInfo,
    PingTestCommand,
    SetHostParamsCommand,
)
from protocol.messages.vm import (
    CheckVirtualMachineAnswer,
    CheckVirtualMachineCommand,
    GetVncPortAnswer,
    GetVncPortCommand,
)
from protocol.model import Answer
from tests.agent_env import agent_config, agent_dir, guid_of, running_agent, running_ms
from tests.conftest_lab import LAB_DIR

pytestmark = pytest.mark.lab
VNC_VM = "zhvnc"
MIG_VM = "zhmig"
REPORT_VMS = ("zhrun", "zhpause", "zhoff")


def _clear(lab: Lab) -> None:
    for host in lab.hosts.values():
        for vm in (VNC_VM, MIG_VM, *REPORT_VMS):
            host.remove_domain(vm)


@pytest.fixture(scope="module")
def cloud(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    _clear(lab)
    c = Cloud(lab, tmp_path_factory.mktemp("zone-host"), LabCA.load(LAB_DIR / LAB_CA_DIRNAME))
    try:
        c.start_ms("ms1", "a")
        # 1 MiB/s: a migration of the 98 MiB guest outlasts the MS's migration wait below.
        c.start_agent("a", "vm.migrate.speed=1")
        c.start_agent("b")
        yield c
    finally:
        c.close()
        _clear(lab)


async def both_up(cloud: Cloud) -> None:
    await cloud.wait_host("a")
    await cloud.wait_host("b")


def labels(guest: str, private: str, public: str) -> CheckNetworkCommand:
    info = PhysicalNetworkSetupInfo(
        physical_network_id=200,
        guest_network_name=guest,
        private_network_name=private,
        public_network_name=public,
    )
    return CheckNetworkCommand(network_info_list=[info])


async def test_check_network_on_the_lab_hosts(lab: Lab, cloud: Cloud) -> None:
    await both_up(cloud)
    for name in ("a", "b"):
        answer = await cloud.ask(name, labels("cloudbr0", "cloudbr0", "cloudbr0"))
        assert answer == CheckNetworkAnswer(result=True), (name, answer)
        assert verdict_for(CheckNetworkCommand(), answer).ok
    a = lab.hosts["a"]
    # A bridge holding only a VM tap, as left behind when its uplink is gone.
    a.check(["ip", "link", "add", "zhbr0", "type", "bridge"])
    try:
        a.check(["ip", "tuntap", "add", "dev", "vnet77", "mode", "tap"])
        a.check(["ip", "link", "set", "vnet77", "master", "zhbr0"])
        on_a = await cloud.ask("a", labels("zhbr0", "cloudbr0", "cloudbr9"))
        on_b = await cloud.ask("b", labels("zhbr0", "cloudbr0", "cloudbr0"))
    finally:
        a.run(["ip", "link", "del", "vnet77"], check=False)
        a.run(["ip", "link", "del", "zhbr0"], check=False)
    assert isinstance(on_a, CheckNetworkAnswer) and not on_a.result
    assert on_a.details == (
        "Can not find network: zhbr0 (bridge without a physical uplink (ports: vnet77); "
        "CloudStack needs one whose name starts with eth, bond, en..., team, vlan or vx), "
        "cloudbr9 (no bridge or interface of that name on this host)"
    )
    verdict = verdict_for(CheckNetworkCommand(), on_a)
    assert verdict.host_effect is HostEffect.ALERT and "cloudbr9" in verdict.reason
    assert isinstance(on_b, CheckNetworkAnswer) and not on_b.result
    assert on_b.details == (
        "Can not find network: zhbr0 (no bridge or interface of that name on this host)"
    )


async def test_ping_test_between_the_hosts(cloud: Cloud) -> None:
    await both_up(cloud)
    reached = await cloud.ask("a", PingTestCommand(computing_host_ip="10.200.0.2"))
    missing = await cloud.ask("a", PingTestCommand(computing_host_ip="10.200.0.77"))
    assert type(reached) is Answer and reached.result
    assert verdict_for(PingTestCommand(), reached).read == {"status": "Up"}
    assert type(missing) is Answer and not missing.result
    # The lab hosts have no default route: the answer says so.
    assert missing.details == (
        "Unable to ping computing host 10.200.0.77; this host has no default route"
    )
    assert verdict_for(PingTestCommand(), missing).read == {"status": "Unknown"}


def _vnc_xml(lab: Lab) -> str:
    a = lab.hosts["a"]
    xml = domain_xml(VNC_VM, a.kernel, tcg=True, serial_log=a.serial_log(VNC_VM))
    vnc = f"<graphics type='vnc' autoport='yes' listen='{a.ip}'/>\n  </devices>"
    return xml.replace("</devices>", vnc, 1)


RFB_PROBE = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as s:
    print(s.recv(12).decode())
"""


async def test_check_virtual_machine_and_vnc_port_on_a_real_vm(lab: Lab, cloud: Cloud) -> None:
    await both_up(cloud)
    a, b = lab.hosts["a"], lab.hosts["b"]
    a.define_domain(VNC_VM, _vnc_xml(lab))
    live_port = int(a.virsh("vncdisplay", VNC_VM).rsplit(":", 1)[1]) + 5900
    check = CheckVirtualMachineCommand(vm_name=VNC_VM)
    running = await cloud.ask("a", check)
    port = await cloud.ask("a", GetVncPortCommand(id=41, name=VNC_VM))
    assert running == CheckVirtualMachineAnswer(
        result=True, state=PowerState.POWER_ON, vnc_port=live_port - 5900
    )
    assert verdict_for(check, running).ok
    assert port == GetVncPortAnswer(result=True, address=a.ip, port=live_port)
    # The console proxy's view: from the other host, a VNC server at that address and port.
    banner = b.check(["python3", "-c", RFB_PROBE, str(a.ip), str(live_port)])
    assert banner.startswith("RFB 003.")
    a.virsh("suspend", VNC_VM)
    paused = await cloud.ask("a", check)
    assert isinstance(paused, CheckVirtualMachineAnswer) and paused.result
    assert paused.state is PowerState.POWER_UNKNOWN and verdict_for(check, paused).ok
    # After a migration the MS asks the destination: a host without the VM says false.
    elsewhere = await cloud.ask("b", check)
    assert isinstance(elsewhere, CheckVirtualMachineAnswer) and not elsewhere.result
    assert not verdict_for(check, elsewhere).ok
    a.remove_domain(VNC_VM)


async def test_the_ms_migration_wait_bounds_a_real_migration(lab: Lab, cloud: Cloud) -> None:
    await both_up(cloud)
    a, b = lab.hosts["a"], lab.hosts["b"]
    a.define_guest(MIG_VM)
    a.wait_guest_filled(MIG_VM)
    # agent.properties has no vm.migrate.wait; the MS's migratewait (3 s) applies.
    answer = await cloud.ask("a", SetHostParamsCommand(params={"migratewait": "3"}))
    assert type(answer) is Answer and answer.result
    started = time.monotonic()
    reply = await cloud.migrate(MIG_VM, "a", "b")
    took = time.monotonic() - started
    assert reply.get("ok"), reply
    (migrated,) = decode_array([reply["answer"]])
    assert isinstance(migrated, MigrateAnswer) and not migrated.result
    assert f"Migration of VM [{MIG_VM}] was cancelled by CloudStack due to time out after 3 " in (
        migrated.details or ""
    )
    assert took < 60  # bounded by the MS's 3 s, not by the command's 120 s
    assert a.domain_state(MIG_VM) == "running" and b.domain_state(MIG_VM) is None
    # "0" lifts the limit again (as for the Java agent); the MigrateCommand's wait rules.
    await cloud.ask("a", SetHostParamsCommand(params={"migratewait": "0"}))
    a.remove_domain(MIG_VM)


# --- the VM report while libvirtd goes away and comes back ------------------------------


def _pings(ms: ManagementServer, since: int = 0) -> list[PingRoutingCommand]:
    return [
        r.commands[0]
        for _, r in ms.received[since:]
        if isinstance(r.commands[0], PingRoutingCommand)
    ]


async def _until(predicate: Any, timeout: float, what: str) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.1)


async def test_the_vm_report_while_libvirtd_goes_away_and_comes_back(
    lab: Lab, tmp_path: Path
) -> None:
    a = lab.hosts["a"]
    run, paused, off = REPORT_VMS
    a.define_guest(run)
    a.define_guest(paused)
    a.virsh("suspend", paused)
    a.define_guest(off, start=False)
    hostname = a.virsh("hostname")
    # This process reaches host a's libvirtd through its unix socket, in the host's mounts.
    virtlogd = a.daemons.pid("virtlogd")
    uri = f"qemu+unix:///system?socket=/proc/{virtlogd}/root/run/libvirt/libvirt-sock"
    try:
        async with running_ms(tmp_path, ping_interval=1) as ms:
            config = agent_config(
                tmp_path,
                f"127.0.0.1:{ms.port}",
                agent_dir(tmp_path, ms.ca),
                **{"hypervisor.uri": uri},
            )
            async with running_agent(config):
                await ms.wait_for_host(guid_of("agent1"), timeout=20)
                await _until(lambda: any(p.host_vm_state_report for p in _pings(ms)), 10, "report")
                first = next(p.host_vm_state_report for p in _pings(ms) if p.host_vm_state_report)
                await trio.to_thread.run_sync(a.stop_libvirtd)
                stopped = len(ms.received)
                await _until(
                    lambda: sum(p.host_vm_state_report is None for p in _pings(ms, stopped)) >= 2,
                    15,
                    "two pings without a report",
                )
                await trio.to_thread.run_sync(a.start_libvirtd)
                started = len(ms.received)
                await _until(
                    lambda: any(p.host_vm_state_report for p in _pings(ms, started)),
                    40,
                    "a report again",
                )
                again = next(
                    p.host_vm_state_report for p in _pings(ms, started) if p.host_vm_state_report
                )
                # A libvirtd that hangs (stopped, not gone): the pings still go out on time,
                # without a report, instead of waiting for it.
                pid = a.daemons.pid("libvirtd")
                assert pid is not None
                os.kill(pid, signal.SIGSTOP)
                try:
                    frozen = len(ms.received)
                    await _until(
                        lambda: (
                            sum(p.host_vm_state_report is None for p in _pings(ms, frozen)) >= 2
                        ),
                        10,
                        "two pings without a report from a hung libvirtd",
                    )
                finally:
                    os.kill(pid, signal.SIGCONT)
                thawed = len(ms.received)
                await _until(
                    lambda: any(p.host_vm_state_report for p in _pings(ms, thawed)),
                    40,
                    "a report once libvirtd answers again",
                )
    finally:
        if not a.libvirtd_running():
            a.start_libvirtd()
        for vm in REPORT_VMS:
            a.remove_domain(vm)
    assert first is not None and again is not None
    for report in (first, again):
        assert {run, paused} <= set(report) and off not in report
        assert {report[run].state, report[paused].state} == {PowerState.POWER_ON}
        assert report[run].host == hostname
    # Never an empty report, never one without the VMs that kept running all along.
    for ping in _pings(ms):
        seen = ping.host_vm_state_report
        assert seen is None or {run, paused} <= set(seen), seen
