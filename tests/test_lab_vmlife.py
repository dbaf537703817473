"""A VM's life on lab host a, driven through the lab MS as a 4.21 MS drives it: StartCommand
(a volume made from the lab template on the shared pool), RebootCommand, StopCommand; each
answer judged by lab.ms_side.verdict_for, and the domain checked in libvirt."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import attrs
import pytest
import trio

from bench.vmlife import lab_vm_to
from lab.ca import LAB_CA_DIRNAME, LabCA
from lab.cloud import LabCloud
from lab.hosts import Lab
from lab.ms_side import verdict_for
from lab.storage import SHARED_POOL_PATH, SHARED_POOL_UUID
from protocol.messages.to import VirtualMachineTO
from protocol.messages.vm import (
    RebootAnswer,
    RebootCommand,
    StartAnswer,
    StartCommand,
    StopAnswer,
    StopCommand,
)
from tests.conftest_lab import LAB_DIR

pytestmark = pytest.mark.lab
VM = "i-2-77-VM"
STOP_TIMEOUT = 3  # stop.script.timeout: the boot-sector guest ignores ACPI
PASSWORD = "lab-vnc-Passw0rd-long"  # longer than VNC's 8, as a real MS sends


@pytest.fixture(scope="module")
def cloud(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabCloud]:
    c = LabCloud(lab, tmp_path_factory.mktemp("vmlife"), LabCA.load(LAB_DIR / LAB_CA_DIRNAME))
    try:
        c.start_ms("ms1", "a")
        c.start_agent("a", f"stop.script.timeout={STOP_TIMEOUT}")
        trio.run(lambda: c.wait_host("a", timeout=60))
        yield c
    finally:
        c.close()
        lab.hosts["a"].remove_domain(VM)
        lab.hosts["a"].run(
            ["virsh", "-c", "qemu:///system", "pool-destroy", SHARED_POOL_UUID],
            check=False,
            capture_output=True,
        )


def vm_to(volume: str) -> VirtualMachineTO:
    return lab_vm_to(VM, volume, PASSWORD)


async def test_start_reboot_stop_on_a_lab_host(cloud: LabCloud, lab: Lab) -> None:
    a = lab.hosts["a"]
    volume = str(uuid.uuid4())
    disk = a.create_overlay(f"{SHARED_POOL_PATH}/{volume}", lab.place_template())
    start = StartCommand(vm=vm_to(volume), host_ip=a.ip)
    try:
        started = await cloud.ask("a", start)
        assert type(started) is StartAnswer and started.result, started
        verdict = verdict_for(start, started)
        assert verdict.ok, verdict.reason
        assert verdict.read["vncPassword"] == PASSWORD  # the MS's, whole

        assert a.domain_state(VM) == "running"
        assert a.virsh("dominfo", VM).count("Persistent:     no") == 1  # transient
        live = ET.fromstring(a.virsh("dumpxml", "--security-info", VM))
        iface = live.find("./devices/interface")
        assert iface is not None and iface.get("type") == "bridge"
        assert iface.find("source").get("bridge") == "cloudbr0"  # type: ignore[union-attr]
        assert iface.find("mac").get("address") == "02:00:4c:00:00:77"  # type: ignore[union-attr]
        graphics = live.find("./devices/graphics")
        assert graphics is not None and graphics.get("type") == "vnc"
        assert graphics.get("listen") == a.ip == "10.200.0.1"
        assert graphics.get("passwd") == PASSWORD[:8]
        assert live.find("./devices/disk/source").get("file") == disk  # type: ignore[union-attr]
        # <shares> = vCPUs x minSpeed (cgroup v1 here). Whether libvirtd applies it depends
        # on its cpu cgroup controller: the lab's runs with cgroup_controllers = [ ]
        # (lab/hostconf.py), so it keeps the value in the XML and says so in schedinfo.
        assert live.findtext("./cputune/shares") == "500"
        sched = a.run(
            ["virsh", "-c", "qemu:///system", "schedinfo", VM], capture_output=True, text=True
        )
        applied = "cpu_shares     : 500" in sched.stdout
        assert applied or "cgroup CPU controller is not mounted" in sched.stderr, sched

        pid_before = a.check(["pgrep", "-f", f"guest=[{VM[0]}]{VM[1:]}"])
        rebooted = await cloud.ask("a", RebootCommand(vm_name=VM, vm=start.vm))
        assert type(rebooted) is RebootAnswer and rebooted.result, rebooted
        assert verdict_for(RebootCommand(), rebooted).ok
        assert rebooted.vnc_port is not None and rebooted.vnc_port >= 0
        assert a.domain_state(VM) == "running"
        assert a.check(["pgrep", "-f", f"guest=[{VM[0]}]{VM[1:]}"]) == pid_before

        stopped = await cloud.ask("a", StopCommand(vm_name=VM, vm=start.vm))
        assert type(stopped) is StopAnswer and stopped.result, stopped
        assert verdict_for(StopCommand(), stopped).ok
        # The guest ignores the ACPI button: destroyed after stop.script.timeout.
        assert f"destroyed after {STOP_TIMEOUT} s" in (stopped.details or ""), stopped.details
        assert a.domain_state(VM) is None  # nothing defined
        assert VM not in a.virsh("list", "--all", "--name").split()

        # A start that cannot be done leaves nothing and says why.
        assert start.vm is not None and start.vm.nics is not None
        nics = [attrs.evolve(start.vm.nics[0], name="cloudbr9")]
        bad = attrs.evolve(start, vm=attrs.evolve(start.vm, nics=nics))
        refused = await cloud.ask("a", bad)
        assert type(refused) is StartAnswer and not refused.result
        assert "bridge 'cloudbr9' does not exist on this host" in (refused.details or "")
        assert not verdict_for(bad, refused).ok
        assert a.domain_state(VM) is None
    finally:
        a.remove_domain(VM)
        a.run(["rm", "-f", f"{SHARED_POOL_PATH}/{volume}"], check=False)
