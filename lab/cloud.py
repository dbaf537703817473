"""A small cloud on the two-host lab: lab management servers inside the hosts' network
namespaces, and one real agent process inside each hypervisor host.

Used by the end-to-end tests and by ``make demo``. Blocking process control is plain
Python; talking to the MSes (their unix control sockets) is async (trio).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio
from attrs import define

from agent.config import RESOURCE_NAME
from lab.ca import LabCA
from lab.control import control_request
from lab.hosts import Lab
from protocol.codec import decode_array, to_json
from protocol.model import Command, Message

ROOT = Path(__file__).resolve().parent.parent
MS_PORT = 8250
GUID_SUFFIX = "-" + RESOURCE_NAME


@define
class MsProcess:
    name: str
    host: str  # the lab host whose network namespace it runs in
    address: str  # ip:port the agents dial
    directory: Path
    proc: subprocess.Popen[bytes]

    @property
    def control(self) -> Path:
        return self.directory / "control.sock"


class LabCloud:
    def __init__(self, lab: Lab, base: Path, ca: LabCA) -> None:
        self.lab, self.base, self.ca = lab, base, ca
        self.mses: dict[str, MsProcess] = {}
        self.agents: dict[str, subprocess.Popen[bytes]] = {}

    # --- management servers ---------------------------------------------------------

    def start_ms(
        self,
        name: str,
        host: str,
        *,
        ping_interval: int = 2,
        zone: str = "lab",
        stats_interval: float = 0,
    ) -> MsProcess:
        """A lab MS in ``host``'s network namespace. ``zone="lab"``: the real connect
        sequence with the lab's traffic labels and shared pool (``"bare"``: ReadyCommands
        only); ``stats_interval``: the statistics cycle every that many seconds."""
        directory = self.base / name
        directory.mkdir(parents=True, exist_ok=True)
        if not (directory / "ca").exists():
            shutil.copytree(self.ca.directory, directory / "ca")  # one CA per cloud
        address = f"{self.lab.hosts[host].ip}:{MS_PORT}"
        proc = self.lab.hosts[host].popen(
            [
                sys.executable,
                "-m",
                "lab.mgmt",
                "serve",
                "--listen",
                address,
                "--state-dir",
                str(directory),
                "--ping-interval",
                str(ping_interval),
                "--zone",
                zone,
                "--stats-interval",
                str(stats_interval),
            ],
            cwd=ROOT,
            stdout=(self.base / f"{name}.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        ms = MsProcess(name, host, address, directory, proc)
        deadline = time.monotonic() + 30
        while not ms.control.exists():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{name} did not start; see {self.base / f'{name}.log'}")
            time.sleep(0.05)
        self.mses[name] = ms
        return ms

    def kill_ms(self, name: str) -> None:
        """SIGKILL, as a crashed server: its connections drop without a goodbye."""
        ms = self.mses.pop(name)
        ms.proc.send_signal(signal.SIGKILL)
        ms.proc.wait()

    # --- agents ---------------------------------------------------------------------

    def agent_dir(self, name: str) -> Path:
        return self.base / f"agent-{name}"

    def start_agent(self, name: str, *overrides: str, ms: list[str] | None = None) -> None:
        host = self.lab.hosts[name]
        home = self.agent_dir(name)
        certs = home / "certs"
        certs.mkdir(parents=True, exist_ok=True)
        if not (certs / "cloud.ca.crt").exists():
            (certs / "cloud.ca.crt").write_bytes(self.ca.cert_pem)  # trust only, no cert yet
        hosts = ",".join(self.mses[m].address for m in (ms or list(self.mses)))
        props = home / "agent.properties"
        props.write_text(
            f"guid={name}\nhost={hosts}\ncert.dir={certs}\nstate.dir={home / 'state'}\n"
            f"private.network.device={host.bridge}\nssh.keys.dir={home / 'ssh'}\n"
            "backoff.seconds=1\nping.retries=3\nlog.level=debug\n"
            # The lab's guests run under TCG: the boot-sector guest takes ~35 s to boot under
            # this machine's nested KVM, 0.4 s under TCG.
            "vm.domain.type=qemu\n"
        )
        self.agents[name] = host.popen(
            [sys.executable, "-m", "agent", "run", "--config", str(props), *overrides],
            cwd=ROOT,
            stdout=(home / "agent.log").open("ab"),
            stderr=subprocess.STDOUT,
        )

    def stop_agent(self, name: str) -> int:
        proc = self.agents.pop(name)
        proc.terminate()
        try:
            return proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def log_events(self, name: str) -> list[dict[str, Any]]:
        path = self.agent_dir(name) / "agent.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]

    def close(self) -> None:
        for name in list(self.agents):
            self.stop_agent(name)
        for ms in list(self.mses.values()):
            ms.proc.terminate()
            try:
                ms.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                ms.proc.kill()
                ms.proc.wait()
        self.mses.clear()

    # --- talking to a management server --------------------------------------------

    def _ms(self, ms: str | None) -> MsProcess:
        return self.mses[ms] if ms else next(iter(self.mses.values()))

    async def hosts(self, ms: str | None = None) -> dict[str, dict[str, Any]]:
        reply = await control_request(self._ms(ms).control, {"op": "hosts"})
        return {h["guid"].removesuffix(GUID_SUFFIX): h for h in reply["hosts"]}

    async def wait_host(
        self,
        name: str,
        *,
        secured: bool | None = None,
        ms: str | None = None,
        timeout: float = 30,
        poll: float = 0.2,
    ) -> dict[str, Any]:
        with trio.fail_after(timeout):
            while True:
                host = (await self.hosts(ms)).get(name)
                if (
                    host
                    and host["connected"]
                    and host["status"] == "Up"
                    and (secured is None or host["secured"] == secured)
                ):
                    return host
                await trio.sleep(poll)

    async def control(self, request: dict[str, Any], *, ms: str | None = None) -> dict[str, Any]:
        """One control request; RuntimeError with the MS's text if it failed."""
        reply = await control_request(self._ms(ms).control, request)
        if not reply.get("ok"):
            raise RuntimeError(f"{request.get('op')}: {reply.get('error')}")
        return reply

    async def connects(self, name: str, *, ms: str | None = None) -> list[dict[str, Any]]:
        """Each run of the connect sequence for host ``name``, oldest first."""
        reply = await self.control({"op": "connects"}, ms=ms)
        return [c for c in reply["connects"] if c["guid"] == name + GUID_SUFFIX]

    async def stats(self, *, ms: str | None = None) -> dict[str, Any]:
        """What the MS's statistics cycle collected (host stats by guid, VMs, pools...)."""
        return dict((await self.control({"op": "stats"}, ms=ms))["stats"])

    async def track_volume(self, pool: str, path: str, vm: str, *, ms: str | None = None) -> None:
        """Tell the MS that ``path`` on ``pool`` is a volume of ``vm`` (volume statistics)."""
        await self.control({"op": "track_volume", "pool": pool, "path": path, "vm": vm}, ms=ms)

    async def disconnect(self, name: str, *, ms: str | None = None) -> None:
        """The MS closes the host's connection (the agent comes back after its back-off)."""
        await self.control({"op": "disconnect", "host": name + GUID_SUFFIX}, ms=ms)

    async def _send_item(
        self, name: str, item: dict[str, Any], ms: str | None, timeout: float
    ) -> dict[str, Any]:
        """One command (``{java class: fields}``) to host ``name``; its answer item."""
        reply = await control_request(
            self._ms(ms).control,
            {"op": "send", "host": name + GUID_SUFFIX, "commands": [item], "timeout": timeout},
        )
        if not reply.get("ok"):
            raise RuntimeError(reply.get("error"))
        answer: dict[str, Any] = reply["answers"][0]
        return answer

    async def send(
        self, name: str, item: dict[str, Any], *, ms: str | None = None, timeout: float = 120
    ) -> dict[str, Any]:
        """Send one command given as JSON; returns the answer's fields."""
        ((_cls, fields),) = (await self._send_item(name, item, ms, timeout)).items()
        return dict(fields)

    async def ask(
        self, name: str, command: Command, *, ms: str | None = None, timeout: float = 120
    ) -> Message:
        """Send one command; the answer as the MS decoded it (its class included)."""
        item = await self._send_item(name, {command.java_class: to_json(command)}, ms, timeout)
        (answer,) = decode_array([item])
        return answer

    async def migrate(
        self,
        vm: str,
        source: str,
        dest: str,
        *,
        ms: str | None = None,
        timeout: float = 120,
        vm_to: dict[str, Any] | None = None,
        storage: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The MS's migration (PrepareForMigration on dest, Migrate on source, then its
        check); the reply (lab.control). RuntimeError if the MS could not run it."""
        request: dict[str, Any] = {
            "op": "migrate",
            "vm": vm,
            "source": source + GUID_SUFFIX,
            "destination": dest + GUID_SUFFIX,
            "timeout": timeout,
        }
        if vm_to is not None:
            request["vm_to"] = vm_to
        if storage is not None:
            request["storage"] = storage
        return await self.control(request, ms=ms)

    async def provision(self, name: str, *, ms: str | None = None) -> dict[str, Any]:
        """In-band, as the real MS does: SetupKeyStoreCommand, sign the CSR, install."""
        keystore = await self.send(
            name,
            {
                "org.apache.cloudstack.ca.SetupKeyStoreCommand": {
                    "validityDays": 365,
                    "keystorePassword": "lab-keystore-pass",
                    "handleByAgent": True,
                }
            },
            ms=ms,
        )
        if not keystore.get("result") or "CERTIFICATE REQUEST" not in keystore.get("csr", ""):
            raise RuntimeError(f"{name}: no CSR: {keystore.get('details')}")
        cert = self.ca.sign_csr(keystore["csr"].encode())
        return await self.send(
            name,
            {
                "org.apache.cloudstack.ca.SetupCertificateCommand": {
                    "certificate": cert.decode(),
                    "caCertificates": self.ca.cert_pem.decode(),
                    "privateKey": "",
                    "handleByAgent": True,
                }
            },
            ms=ms,
        )
