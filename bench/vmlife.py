"""VM start/stop benchmark on lab host a (root): ``python -m bench.vmlife``.

* **StartCommand -> running**: from the lab MS sending a StartCommand (a 128 MiB marker
  guest, its root volume a qcow2 overlay of the lab template on the shared pool, one NIC on
  cloudbr0) to its StartAnswer; the domain is running when the answer leaves the agent
  (createXML returns once QEMU runs the guest), checked after each run.
* **StopCommand -> gone**: from sending a StopCommand with ``forceStop`` (destroy at once:
  the marker guest ignores the ACPI button, so a graceful stop would only measure
  ``stop.script.timeout``) to its StopAnswer; nothing is defined afterwards.

Medians over ``--runs`` runs (a fresh volume each). Indicative on a shared two-core machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from typing import Any, Final

import trio

from agent import logs
from bench.labcloud import lab_cloud
from bench.report import RESULTS, report
from lab.cloud import LabCloud
from lab.storage import SHARED_POOL_PATH, SHARED_POOL_UUID
from protocol.codec import from_json, to_json
from protocol.messages.to import VirtualMachineTO
from protocol.messages.vm import StartCommand, StopCommand

RUNS: Final = 5
VM = "i-2-88-VM"


def lab_vm_to(name: str, volume: str, vnc_password: str = "bench-vnc-password") -> VirtualMachineTO:
    """A User VM as a 4.21 MS describes it: root volume ``volume`` on the lab's shared
    SharedMountPoint pool, the empty ISO slot, one Guest NIC on cloudbr0 (untagged)."""
    store = {
        "org.apache.cloudstack.storage.to.PrimaryDataStoreTO": {
            "uuid": SHARED_POOL_UUID, "name": "lab-primary", "id": 1,
            "poolType": "SharedMountPoint", "host": "localhost", "path": SHARED_POOL_PATH,
            "port": 0, "details": {}, "isManaged": False,
        }
    }  # fmt: skip
    raw: dict[str, Any] = {
        "id": 77, "name": name, "state": "Starting", "type": "User", "cpus": 1,
        "minSpeed": 500, "maxSpeed": 500, "minRam": 128 << 20, "maxRam": 128 << 20,
        "arch": "x86_64", "os": "Other PV (64-bit)", "platformEmulator": "Other PV (64-bit)",
        "enableHA": False, "limitCpuUse": False, "vncPassword": vnc_password,
        "uuid": str(uuid.uuid4()), "details": {},
        "disks": [
            {"data": {"org.apache.cloudstack.storage.to.VolumeObjectTO": {
                "uuid": volume, "volumeType": "ROOT", "dataStore": store, "name": "ROOT-77",
                "size": 8 << 20, "path": volume, "format": "QCOW2", "id": 77, "deviceId": 0,
                "accountId": 2, "hypervisorType": "KVM"}},
             "diskSeq": 0, "path": volume, "type": "ROOT"},
            {"data": {"org.apache.cloudstack.storage.to.TemplateObjectTO": {"format": "ISO"}},
             "diskSeq": 3, "type": "ISO"},
        ],
        "nics": [{
            "deviceId": 0, "defaultNic": True, "mac": "02:00:4c:00:00:77", "ip": "10.1.1.77",
            "type": "Guest", "broadcastType": "Native", "broadcastUri": "vlan://untagged",
            "name": "cloudbr0", "networkRateMbps": -1,
        }],
    }  # fmt: skip
    return from_json(VirtualMachineTO, raw, "lab VM")


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


async def _timed(cloud: LabCloud, command: StartCommand | StopCommand) -> float:
    began = time.perf_counter()
    answer = await cloud.send("a", {command.java_class: to_json(command)})
    took = time.perf_counter() - began
    if not answer.get("result"):
        raise RuntimeError(f"{command.java_class}: {answer.get('details')}")
    return took


async def run(runs: int = RUNS) -> dict[str, Any]:
    starts: list[float] = []
    stops: list[float] = []
    async with lab_cloud("vmlife") as (lab, cloud):
        a = lab.hosts["a"]
        try:
            cloud.start_ms("ms1", "a")
            cloud.start_agent("a")
            await cloud.wait_host("a", timeout=60)
            template = await trio.to_thread.run_sync(lab.place_template)
            for _ in range(runs):
                volume = str(uuid.uuid4())
                path = f"{SHARED_POOL_PATH}/{volume}"
                await trio.to_thread.run_sync(a.create_overlay, path, template)
                start = StartCommand(vm=lab_vm_to(VM, volume), host_ip=a.ip)
                starts.append(await _timed(cloud, start))
                if a.domain_state(VM) != "running":
                    raise RuntimeError(f"{VM} is {a.domain_state(VM)} after its StartAnswer")
                await trio.sleep(0.5)
                stops.append(await _timed(cloud, StopCommand(vm_name=VM, force_stop=True)))
                if a.domain_state(VM) is not None:
                    raise RuntimeError(f"{VM} is still defined after its StopAnswer")
                a.run(["rm", "-f", path], check=False)
        finally:
            a.remove_domain(VM)
    return {
        "runs": runs,
        "start_to_running_median_ms": _ms(statistics.median(starts)),
        "start_to_running_max_ms": _ms(max(starts)),
        "stop_to_gone_median_ms": _ms(statistics.median(stops)),
        "stop_to_gone_max_ms": _ms(max(stops)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--save", action="store_true", help=f"also write the figures as 'vmlife' into {RESULTS}"
    )
    args = parser.parse_args()
    logs.configure("warning")
    result = trio.run(lambda: run(args.runs))
    report("vmlife", result, as_json=args.json, save=args.save)


if __name__ == "__main__":
    main()
