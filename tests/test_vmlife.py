"""StartCommand, StopCommand, RebootCommand through a real agent on libvirt's test:/// driver,
each answer judged by what a 4.21 MS does with it (lab.ms_side.verdict_for).

The test driver runs no QEMU: it checks the XML and keeps domain state. The NIC is on
``lo`` (an interface that exists on every host; test:/// plugs nothing into it).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import attrs
import libvirt
import trio

from agent.hypervisor.events import start_event_loop
from lab.ms_side import verdict_for
from protocol.codec import from_json
from protocol.messages.to import VirtualMachineTO
from protocol.messages.vm import (
    RebootAnswer,
    RebootCommand,
    StartAnswer,
    StartCommand,
    StopAnswer,
    StopCommand,
)
from tests.test_domainxml import START_VM, VOL
from tests.test_zone_host import agent_on_ms, ask

POOL = "5a1e0000-0000-4000-8000-00000000cafe"


def vm_on(pool_dir: Path, name: str) -> VirtualMachineTO:
    raw: dict[str, Any] = copy.deepcopy(START_VM)
    raw["name"] = name
    raw["uuid"] = "ba4024c3-a2fd-4fb9-af9e-e4a4b2be59d0"
    vol = raw["disks"][0]["data"]["org.apache.cloudstack.storage.to.VolumeObjectTO"]
    store = vol["dataStore"]["org.apache.cloudstack.storage.to.PrimaryDataStoreTO"]
    store.update(uuid=POOL, poolType="SharedMountPoint", path=str(pool_dir), host="localhost")
    raw["nics"][0].update(broadcastType="Native", broadcastUri=None, name="lo")
    return from_json(VirtualMachineTO, raw, "test")


def _look(name: str) -> str:
    start_event_loop()
    conn = libvirt.open("test:///default")
    try:
        names = [d.name() for d in conn.listAllDomains()]
        if name not in names:
            return "none"
        dom = conn.lookupByName(name)
        persistent = "persistent" if dom.isPersistent() else "transient"
        return f"{'running' if dom.isActive() else 'off'} {persistent}"
    finally:
        conn.close()


async def look(name: str) -> str:
    return await trio.to_thread.run_sync(_look, name)


async def test_start_reboot_stop_as_the_ms_reads_them(tmp_path: Path) -> None:
    (tmp_path / VOL).write_bytes(b"")
    vm = vm_on(tmp_path, "i-2-31-VM")
    start = StartCommand(vm=vm, host_ip="127.0.0.1")
    async with agent_on_ms(tmp_path) as (ms, _agent):
        started = await ask(ms, start)
        running = await look("i-2-31-VM")
        again = await ask(ms, start)
        still = await look("i-2-31-VM")
        rebooted = await ask(ms, RebootCommand(vm_name="i-2-31-VM", vm=vm))
        refused = await ask(ms, StopCommand(vm_name="i-2-31-VM", check_before_cleanup=True))
        stopped = await ask(ms, StopCommand(vm_name="i-2-31-VM"))
        gone = await look("i-2-31-VM")
        twice = await ask(ms, StopCommand(vm_name="i-2-31-VM"))
        no_reboot = await ask(ms, RebootCommand(vm_name="i-2-31-VM"))

    assert isinstance(started, StartAnswer) and started.result, started
    assert started.vm == vm  # echoed whole: the full vncPassword, the disks, the NIC ips
    assert started.vm is not None and started.vm.vnc_password == "qWI23VL8vzAYpeKcdMF_Kw"
    verdict = verdict_for(start, started)
    assert verdict.ok, verdict.reason
    assert verdict.read["vncPassword"] == "qWI23VL8vzAYpeKcdMF_Kw"
    assert running == "running transient"

    # A second start of a running VM is refused and leaves it running.
    assert isinstance(again, StartAnswer) and not again.result
    assert "already running" in (again.details or "")
    assert not verdict_for(start, again).ok
    assert still == "running transient"

    assert isinstance(rebooted, RebootAnswer) and type(rebooted) is RebootAnswer
    assert verdict_for(RebootCommand(), rebooted).ok

    assert isinstance(refused, StopAnswer) and not refused.result
    assert "still running" in (refused.details or "")

    assert isinstance(stopped, StopAnswer) and stopped.result
    assert verdict_for(StopCommand(), stopped).ok
    assert gone == "none"  # transient: nothing left defined
    # Stopping what is not there is no failure (the Java agent: domain not found = stopped).
    assert isinstance(twice, StopAnswer) and twice.result
    assert verdict_for(StopCommand(), twice).ok
    assert isinstance(no_reboot, RebootAnswer) and not no_reboot.result
    assert "i-2-31-VM" in (no_reboot.details or "")
    assert not verdict_for(RebootCommand(), no_reboot).ok


async def test_failed_starts_say_why_and_leave_nothing(tmp_path: Path) -> None:
    vm = vm_on(tmp_path, "i-2-32-VM")  # no volume file
    missing_disk = StartCommand(vm=vm, host_ip="127.0.0.1")
    assert vm.nics is not None
    nics = [attrs.evolve(vm.nics[0], name="nosuchbr0")]
    bad_label = StartCommand(vm=attrs.evolve(vm, name="i-2-33-VM", nics=nics), host_ip="127.0.0.1")
    bad_xml = StartCommand(vm=attrs.evolve(vm, name="i-2-34-VM", cpus=0), host_ip="127.0.0.1")
    async with agent_on_ms(tmp_path) as (ms, _agent):
        no_disk = await ask(ms, missing_disk)
        (tmp_path / VOL).write_bytes(b"")
        no_bridge = await ask(ms, bad_label)
        no_cpus = await ask(ms, bad_xml)
        left = [await look(n) for n in ("i-2-32-VM", "i-2-33-VM", "i-2-34-VM")]
    for answer, words in (
        (no_disk, f"{tmp_path}/{VOL} does not exist on this host"),
        (no_bridge, "bridge 'nosuchbr0' does not exist on this host"),
        (no_cpus, "cpus is 0"),
    ):
        assert type(answer) is StartAnswer and not answer.result
        assert words in (answer.details or ""), answer.details
        assert answer.vm is not None  # the MS reads vm even from a failure
        verdict = verdict_for(missing_disk, answer)
        assert not verdict.ok and "another host is tried" in verdict.reason
    assert left == ["none", "none", "none"]
