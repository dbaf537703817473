"""``make demo``: the whole story on real parts, then a clean teardown.

Two lab management servers (MS1 in host A's network namespace, MS2 in host B's), two
hypervisor hosts with their own libvirtd and QEMU, one agent per host. The agents register
unsecured and reach Up through a 4.21 MS's connect sequence (the shared primary pool attached
on both hosts, the traffic labels checked), then the MS's statistics cycle runs; certificates
are provisioned in-band; libvirtd takes them once the agents are
idle; the agents register again as secured. Then a VM as CloudStack makes one: a volume
cloned from the template on the shared pool (CopyCommand), StartCommand on A; the MS's
migration sequence (PrepareForMigration on B, MigrateCommand on A over qemu+tls with QEMU
native TLS while a packet capture looks for the guest's memory and disk markers on the
wire, CheckVirtualMachine on B); A's ping no longer lists it. MS1 is killed and the agents move
to MS2, which stops the VM on B (nothing stays defined on either host) and deletes its
volume (DeleteCommand).

Without root or QEMU it says so and runs what works here: a session against libvirt's
test driver, with failover between two management servers on loopback.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from agent import logs
from lab.bootdisk import DISK_MARKER
from lab.ca import LAB_CA_DIRNAME, LabCA
from lab.cloud import LabCloud
from lab.cloudvm import clone_command, delete_command, vm_to, wait_ram_filled
from lab.hosts import DEFAULT_WORKDIR, Lab, count_marker, lab_unavailable
from lab.storage import SHARED_POOL_PATH
from protocol.codec import to_json

VM = "i-2-77-VM"
VOLUME = "7c5e9a41-0000-4000-8000-00000000a077"
WORKDIR = DEFAULT_WORKDIR
STATS_INTERVAL = 1.0  # the MS's statistics cycle (60 s in a real MS)
_START = time.monotonic()


def say(text: str) -> None:
    elapsed = time.monotonic() - _START
    print(f"[{int(elapsed // 60):02d}:{elapsed % 60:05.2f}] {text}", flush=True)


def _gib(size: float) -> str:
    return f"{size / 2**30:.1f} GiB"


async def _show_up(cloud: LabCloud, name: str, ms: str) -> float:
    """One line: the host Up, how long after its TCP connect, through which commands."""
    (*_, connect) = [c for c in await cloud.connects(name, ms=ms) if c["outcome"] == "Up"]
    steps = [s["command"].removesuffix("Command").removesuffix("Cmd") for s in connect["steps"]]
    seconds = float(connect["connect_to_up_s"])
    say(
        f"host {name.upper()} Up {seconds * 1000:.0f} ms after its TCP connect: {' > '.join(steps)}"
    )
    return seconds


async def _show_pool_and_stats(cloud: LabCloud, ms: str) -> dict[str, Any]:
    """The shared pool as both hosts attached it, and the first statistics of the cycle."""
    hosts = await cloud.hosts(ms)
    pools = {name: host["pools"] for name, host in hosts.items()}
    with trio.fail_after(30):
        while True:
            stats = await cloud.stats(ms=ms)
            if stats["storage"] and len(stats["host"]) == len(hosts):
                break
            await trio.sleep(0.2)
    (pool_uuid, pool), *_ = stats["storage"].items()
    on = " and ".join(sorted(n.upper() for n, p in pools.items() if pool_uuid in p))
    say(
        f"pool {pool_uuid[:8]} (SharedMountPoint {SHARED_POOL_PATH}) attached on {on}: "
        f"{_gib(pool['capacityBytes'])}, {_gib(pool['usedBytes'])} used"
    )
    for guid, host in sorted(stats["host"].items()):
        total, free = host["totalMemoryKBs"] * 1024, host["freeMemoryKBs"] * 1024
        say(
            f"stats {guid.split('-')[0].upper()}: cpu {host['cpuUtilization']:.1f} %, "
            f"load {host['averageLoad']:.2f}, memory {_gib(free)} free of {_gib(total)}"
        )
    return stats


def _flags(secured: dict[str, bool]) -> str:
    return ", ".join(f"{name.upper()}={str(value).lower()}" for name, value in secured.items())


async def _show_progress(cloud: LabCloud, host: str, stop: trio.Event) -> None:
    seen = len(cloud.log_events(host))
    while not stop.is_set():
        with trio.move_on_after(0.3):
            await stop.wait()
        events = cloud.log_events(host)
        for e in events[seen:]:
            if e.get("event") == "migration progress":
                say(
                    f"    {e['percent']:5.1f} %   {e['mib_s']:6.1f} MiB/s   "
                    f"{e['remaining_mib']:6.1f} MiB left"
                )
        seen = len(events)


async def _migrate(
    cloud: LabCloud, lab: Lab, source: str, dest: str, ms: str, pcap: Path
) -> tuple[dict[str, Any], float, str]:
    stop = trio.Event()
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_show_progress, cloud, source, stop)
        with lab.capture(source, pcap) as cap:
            reply = await cloud.migrate(VM, source, dest, ms=ms)
        stop.set()
    took = time.monotonic() - started
    ((_cls, answer),) = reply["answer"].items()
    if not answer.get("result"):
        raise RuntimeError(f"migration failed: {answer.get('details')}")
    markers = await trio.to_thread.run_sync(count_marker, pcap)
    size = pcap.stat().st_size / 1e6
    return answer, took, f"{markers} (capture: {cap.packets} packets, {size:.0f} MB)"


_API = "com.cloud.agent.api."


def _answer_line(answer: dict[str, Any]) -> str:
    return "result=true" if answer.get("result") else f"result=false ({answer.get('details')})"


async def _vms_in_ping(cloud: LabCloud, name: str, ms: str) -> list[str]:
    return list((await cloud.hosts(ms))[name].get("vms", []))


async def _cloudstack_vm(
    cloud: LabCloud, lab: Lab, base: Path, summary: list[tuple[str, str]]
) -> None:
    """The VM's life as the MS drives it, up to its migration A -> B."""
    a, b = lab.hosts["a"], lab.hosts["b"]
    await trio.to_thread.run_sync(lab.place_template)
    a.run(["rm", "-f", f"{SHARED_POOL_PATH}/{VOLUME}"], check=True)  # an earlier run's
    clone = clone_command(VM, VOLUME)
    copied = await cloud.send("a", {clone.java_class: to_json(clone)})
    if not copied.get("result"):
        raise RuntimeError(f"CopyCommand on A: {copied.get('details')}")
    ((_cls, volume),) = copied["newData"].items()
    say(
        f"MS1 > CopyCommand on A: {_answer_line(copied)}; volume {volume['path'][:8]} "
        f"({volume['format']}, {volume['size'] >> 20} MiB) cloned from the template on the "
        "shared pool"
    )
    to = vm_to(VM, VOLUME)
    started = await cloud.send("a", {_API + "StartCommand": {"vm": to, "hostIp": a.ip}})
    if not started.get("result"):
        raise RuntimeError(f"StartCommand on A: {started.get('details')}")
    say(f"MS1 > StartCommand on A: {_answer_line(started)}; {VM} {a.domain_state(VM)} on A")
    filled = await trio.to_thread.run_sync(wait_ram_filled, a, VM)
    say(f"{VM} booted from its volume and filled its RAM with the marker in {filled:.1f}s")
    with trio.fail_after(30):
        while VM not in await _vms_in_ping(cloud, "a", "ms1"):
            await trio.sleep(0.2)
    say(f"A's ping lists {VM}")

    say(
        "MS1 migrates A -> B: PrepareForMigration on B, Migrate on A over qemu+tls with QEMU "
        "native TLS (capture on A's wire), CheckVirtualMachine on B"
    )
    pcap = base / "cloudstack-vm.pcap"
    stop = trio.Event()
    started_at = time.monotonic()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_show_progress, cloud, "a", stop)
        with lab.capture("a", pcap) as cap:
            reply = await cloud.migrate(VM, "a", "b", ms="ms1", timeout=300, vm_to=to)
        stop.set()
    took = time.monotonic() - started_at
    for step in reply["steps"]:
        read = ", ".join(f"{k}={v}" for k, v in step["read"].items() if v not in (None, {}))
        say(
            f"  {step['command']} on {step['host'].split('-')[0].upper()}: "
            f"{step['answer']} result={str(step['result']).lower()}"
            f"{' ' + read if read else ''} -> {step['ms']}"
        )
    if not reply["migrated"]:
        raise RuntimeError(f"migration failed: {reply['steps'][-1]['details']}")
    ram = await trio.to_thread.run_sync(count_marker, pcap)
    disk = await trio.to_thread.run_sync(count_marker, pcap, DISK_MARKER)
    size = pcap.stat().st_size / 1e6
    say(
        f"done in {took:.2f}s; on the wire ({cap.packets} packets, {size:.0f} MB): "
        f"{ram} memory markers, {disk} disk markers"
    )
    summary.append(("migration A -> B (TLS)", f"{took:.2f} s"))
    summary.append(("plaintext markers A -> B", f"{ram} memory, {disk} disk"))
    with trio.fail_after(30):
        while VM in await _vms_in_ping(cloud, "a", "ms1"):
            await trio.sleep(0.2)
    on_b = VM in await _vms_in_ping(cloud, "b", "ms1")
    say(
        f"A's ping no longer lists {VM}; B's {'does' if on_b else 'does not (yet)'}; "
        f"on A: {a.domain_state(VM) or 'not defined'}, on B: {b.domain_state(VM)}"
    )
    summary.append((f"{VM} after the migration", f"{b.domain_state(VM)} on B, gone from A"))


async def full_story(base: Path) -> list[tuple[str, str]]:
    summary: list[tuple[str, str]] = []
    ca = LabCA.load_or_create(WORKDIR / LAB_CA_DIRNAME)
    t = time.monotonic()
    lab = await trio.to_thread.run_sync(lambda: Lab.create(WORKDIR, ca=ca))
    say(
        f"two hypervisor hosts up: A {lab.hosts['a'].ip}, B {lab.hosts['b'].ip} "
        f"({time.monotonic() - t:.1f}s)"
    )
    cloud = LabCloud(lab, base, ca)
    try:
        cloud.start_ms("ms1", "a", stats_interval=STATS_INTERVAL)
        cloud.start_ms("ms2", "b", stats_interval=STATS_INTERVAL)
        say(f"MS1 on {cloud.mses['ms1'].address}, MS2 on {cloud.mses['ms2'].address}, one CA")
        t = time.monotonic()
        for name in ("a", "b"):
            # The marker guest ignores ACPI: StopCommand waits 3 s, not 120, to destroy it.
            cloud.start_agent(name, "stop.script.timeout=3")
        ups = []
        for name in ("a", "b"):
            host = await cloud.wait_host(name, ms="ms1", timeout=60)
            ups.append(await _show_up(cloud, name, "ms1"))
            say(f"  registered with MS1 as host {host['id']}: secured={host['secured']}")
        summary.append(("agents registered and Up", f"{time.monotonic() - t:.2f} s"))
        summary.append(("TCP connect -> Up (A, B)", ", ".join(f"{u * 1000:.0f} ms" for u in ups)))
        stats = await _show_pool_and_stats(cloud, "ms1")
        summary.append(("hosts with statistics", str(len(stats["host"]))))
        summary.append(("secured before provisioning", "A=false, B=false"))

        t = time.monotonic()
        for name in ("a", "b"):
            answer = await cloud.provision(name, ms="ms1")
            if not answer.get("result"):
                raise RuntimeError(f"provisioning {name}: {answer.get('details')}")
            say(
                f"{name.upper()}: key + CSR made by the agent, signed by the MS's CA, "
                "installed; libvirtd reload waits for idle"
            )
        after = {}
        for name in ("a", "b"):
            host = await cloud.wait_host(name, ms="ms1", secured=True)
            after[name] = host["secured"]
            say(f"agent {name.upper()} registered again: secured={host['secured']}")
        summary.append(("provisioning (both hosts)", f"{time.monotonic() - t:.2f} s"))
        summary.append(("secured after provisioning", _flags(after)))

        await _cloudstack_vm(cloud, lab, base, summary)

        say("killing MS1 (SIGKILL)")
        killed = time.monotonic()
        cloud.kill_ms("ms1")
        for name in ("a", "b"):
            await cloud.wait_host(name, ms="ms2", secured=True, poll=0.02)
        failover = time.monotonic() - killed
        say(f"both agents Up on MS2 {failover * 1000:.0f} ms after MS1 died")
        summary.append(("failover MS1 -> MS2, both Up", f"{failover * 1000:.0f} ms"))

        stopped = await cloud.send("b", {_API + "StopCommand": {"vmName": VM}}, ms="ms2")
        if not stopped.get("result"):
            raise RuntimeError(f"StopCommand on B: {stopped.get('details')}")
        left = [n.upper() for n, h in lab.hosts.items() if h.domain_state(VM) is not None]
        say(f"MS2 > StopCommand on B: {_answer_line(stopped)}; defined on: {left or 'no host'}")
        summary.append((f"{VM} after StopCommand", f"defined on {', '.join(left) or 'no host'}"))
        delete = delete_command(VM, VOLUME)
        deleted = await cloud.send("b", {delete.java_class: to_json(delete)}, ms="ms2")
        say(f"MS2 > DeleteCommand on B: {_answer_line(deleted)}; volume {VOLUME[:8]} expunged")
    finally:
        t = time.monotonic()
        cloud.close()
        await trio.to_thread.run_sync(lab.teardown)
        say(f"teardown done ({time.monotonic() - t:.1f}s)")
    return summary


async def test_driver_story(base: Path) -> list[tuple[str, str]]:
    """What runs without root: one agent on libvirt's test driver, two MSes, failover."""
    from agent.config import AgentConfig, host_guid
    from agent.daemon.app import Agent
    from lab.ms import ManagementServer
    from protocol.messages.host import CheckHealthCommand, StartupRoutingCommand

    guid = host_guid("demo-host")
    ca = LabCA.create(base / "cloud-ca")
    mses = []
    for name in ("ms1", "ms2"):
        (base / name).mkdir()
        shutil.copytree(ca.directory, base / name / "ca")
        mses.append(ManagementServer.create(state_dir=base / name, ping_interval=2))
    ms1, ms2 = mses
    summary: list[tuple[str, str]] = []
    async with trio.open_nursery() as outer:
        await outer.start(ms2.serve)
        async with trio.open_nursery() as ms1_scope:
            await ms1_scope.start(ms1.serve)
            (base / "agent").mkdir()
            (base / "agent" / "cloud.ca.crt").write_bytes(ca.cert_pem)
            config = AgentConfig.from_properties(
                {
                    "guid": "demo-host",
                    "host": f"127.0.0.1:{ms1.port},127.0.0.1:{ms2.port}",
                    "hypervisor.uri": "test:///default",
                    "cert.dir": str(base / "agent"),
                    "state.dir": str(base / "agent-state"),
                }
            )
            agent = Agent(config, handle_signals=False)
            outer.start_soon(agent.run)
            record = await ms1.wait_for_host(guid, timeout=30)
            say(f"agent registered with MS1 as host {record.id} (secured={record.secured})")
            (answer,) = await ms1.send_command(guid, [CheckHealthCommand()])
            say(f"MS1 -> CheckHealthCommand -> {answer.details}")  # type: ignore[attr-defined]
            killed = time.monotonic()
            ms1_scope.cancel_scope.cancel()
        await ms2.wait_for_request(
            lambda _g, r: isinstance(r.commands[0], StartupRoutingCommand), timeout=30
        )
        failover = time.monotonic() - killed
        await ms2.wait_for_host(guid, timeout=30)
        say(f"MS1 stopped; agent registered with MS2 {failover * 1000:.0f} ms later")
        summary.append(("failover MS1 -> MS2", f"{failover * 1000:.0f} ms"))
        agent.request_stop()
        with trio.fail_after(10):
            while agent.session is not None:
                await trio.sleep(0.05)
        outer.cancel_scope.cancel()
    for ms in mses:
        ms.close()
    return summary


def main() -> int:
    logs.configure("warning")
    base = Path(tempfile.mkdtemp(prefix="kvm-agent-demo-"))
    reason = lab_unavailable()
    try:
        if reason:
            print(f"The two-host part of the demo cannot run here ({reason}).")
            print("Running what works: one agent on libvirt's test driver, two MSes.\n")
            summary = trio.run(test_driver_story, base)
        else:
            summary = trio.run(full_story, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print("\nsummary")
    width = max(len(k) for k, _ in summary)
    for what, value in summary:
        print(f"  {what:<{width}}  {value}")
    print(f"\ntotal {time.monotonic() - _START:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
