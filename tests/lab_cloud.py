"""A small cloud on the two-host lab: the lab MS in host A's network namespace (reachable
from both hosts at 10.200.0.1:8250), one real agent process inside each host."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

from lab.ca import LabCA
from lab.control import control_request
from lab.hosts import Lab, LabHost

ROOT = Path(__file__).resolve().parent.parent
MS_PORT = 8250


class Cloud:
    def __init__(self, lab: Lab, base: Path, ca: LabCA) -> None:
        self.lab, self.base, self.ca = lab, base, ca
        self.ms_dir = base / "ms"
        self.control = self.ms_dir / "control.sock"
        self.ms: subprocess.Popen[bytes] | None = None
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.ms_ip = lab.hosts["a"].ip

    # --- processes ------------------------------------------------------------------

    def start_ms(self) -> None:
        self.ms_dir.mkdir(parents=True, exist_ok=True)
        if not (self.ms_dir / "ca").exists():
            shutil.copytree(self.ca.directory, self.ms_dir / "ca")  # the cloud's CA
        self.ms = self.lab.hosts["a"].popen(
            [
                sys.executable,
                "-m",
                "lab.mgmt",
                "serve",
                "--listen",
                f"{self.ms_ip}:{MS_PORT}",
                "--state-dir",
                str(self.ms_dir),
                "--ping-interval",
                "2",
            ],
            cwd=ROOT,
            stdout=(self.base / "ms.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while not self.control.exists():
            if time.monotonic() > deadline or self.ms.poll() is not None:
                raise RuntimeError(f"lab MS did not start; see {self.base / 'ms.log'}")
            time.sleep(0.05)

    def agent_dir(self, name: str) -> Path:
        return self.base / f"agent-{name}"

    def start_agent(self, name: str, *overrides: str) -> None:
        host: LabHost = self.lab.hosts[name]
        home = self.agent_dir(name)
        certs = home / "certs"
        certs.mkdir(parents=True, exist_ok=True)
        if not (certs / "cloud.ca.crt").exists():
            (certs / "cloud.ca.crt").write_bytes(self.ca.cert_pem)  # trust only, no cert yet
        props = home / "agent.properties"
        props.write_text(
            f"guid={name}\nhost={self.ms_ip}:{MS_PORT}\ncert.dir={certs}\n"
            f"state.dir={home / 'state'}\nprivate.network.device={host.veth}\n"
            "backoff.seconds=1\nping.retries=3\nlog.level=debug\n"
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
        out = []
        for line in (self.agent_dir(name) / "agent.log").read_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def close(self) -> None:
        for name in list(self.agents):
            self.stop_agent(name)
        if self.ms is not None:
            self.ms.terminate()
            try:
                self.ms.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.ms.kill()
                self.ms.wait()

    # --- the MS's control API -------------------------------------------------------

    async def request(self, **request: Any) -> dict[str, Any]:
        reply = await control_request(self.control, request)
        return reply

    async def hosts(self) -> dict[str, dict[str, Any]]:
        reply = await self.request(op="hosts")
        return {h["guid"].removesuffix("-LibvirtComputingResource"): h for h in reply["hosts"]}

    async def wait_host(
        self, name: str, *, secured: bool | None = None, timeout: float = 30
    ) -> dict[str, Any]:
        with trio.fail_after(timeout):
            while True:
                host = (await self.hosts()).get(name)
                if (
                    host
                    and host["connected"]
                    and host["status"] == "Up"
                    and (secured is None or host["secured"] == secured)
                ):
                    return host
                await trio.sleep(0.2)

    async def send(self, name: str, item: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
        reply = await self.request(
            op="send", host=f"{name}-LibvirtComputingResource", commands=[item], timeout=timeout
        )
        assert reply["ok"], reply
        ((_cls, fields),) = reply["answers"][0].items()
        return dict(fields)

    async def migrate(
        self, vm: str, source: str, dest: str, timeout: float = 120
    ) -> dict[str, Any]:
        return await self.request(
            op="migrate",
            vm=vm,
            source=f"{source}-LibvirtComputingResource",
            destination=f"{dest}-LibvirtComputingResource",
            timeout=timeout,
        )

    async def provision(self, name: str) -> dict[str, Any]:
        """In-band, as the real MS does: SetupKeyStoreCommand -> sign the CSR -> install."""
        keystore = await self.send(
            name,
            {
                "org.apache.cloudstack.ca.SetupKeyStoreCommand": {
                    "validityDays": 365,
                    "keystorePassword": "lab-keystore-pass",
                    "handleByAgent": True,
                }
            },
        )
        assert keystore["result"] and "CERTIFICATE REQUEST" in keystore["csr"]
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
        )
