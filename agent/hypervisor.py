"""The one owner of the libvirt connection.

Every libvirt call is blocking, so each runs in a worker thread under a dedicated
CapacityLimiter; libvirt's error is read in the thread that failed. A failed call marks
the connection lost; the next call reconnects.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import libvirt
import structlog
import trio
from attrs import frozen

from agent import hostinfo

log = structlog.get_logger("agent.hypervisor")
_T = TypeVar("_T")


# libvirt reports its version as major * 1,000,000 + minor * 1,000 + release.
def _version(number: int) -> str:
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


class HypervisorError(Exception):
    """libvirt failed; the message is libvirt's own, read in the failing thread."""


@frozen
class HostFacts:
    cpus: int
    cpu_sockets: int
    speed_mhz: int
    memory: int  # bytes
    dom0_min_memory: int
    caps: str
    hypervisor_version: str
    libvirt_version: str
    arch: str
    hostname: str
    fqdn: str
    os_name: str
    os_version: str
    kernel: str
    private: hostinfo.Interface | None


class Hypervisor:
    def __init__(self, uri: str, *, private_device: str = "", threads: int = 4) -> None:
        self.uri = uri
        self.private_device = private_device
        self.limiter = trio.CapacityLimiter(threads)
        self._conn: Any = None
        self._conn_lock = threading.Lock()  # worker threads race to (re)open the connection
        self.last_error: str | None = None
        self.last_facts: HostFacts | None = None  # for registering while libvirtd is away

    @property
    def connected(self) -> bool:
        return self._conn is not None

    async def call(self, fn: Callable[[Any], _T]) -> _T:
        """Run ``fn(conn)`` in a worker thread; reconnects first if needed."""

        def work() -> _T:
            try:
                with self._conn_lock:
                    if self._conn is None:
                        self._conn = libvirt.open(self.uri)
                    conn = self._conn
                return fn(conn)
            except libvirt.libvirtError as exc:
                message = exc.get_error_message() or str(exc)
                with self._conn_lock:
                    if self._conn is not None and not self._alive():
                        self._drop()
                raise HypervisorError(message) from None

        try:
            result = await trio.to_thread.run_sync(work, limiter=self.limiter)
        except HypervisorError as exc:
            self.last_error = str(exc)
            raise
        self.last_error = None
        return result

    def _alive(self) -> bool:
        try:
            return bool(self._conn.isAlive())
        except libvirt.libvirtError:
            return False

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        try:
            conn.close()
        except libvirt.libvirtError:
            pass

    async def healthy(self) -> bool:
        try:
            return await self.call(lambda c: bool(c.isAlive()))
        except HypervisorError:
            return False

    async def host_facts(self) -> HostFacts:
        def facts(conn: Any) -> tuple[list[Any], int, int, str]:
            info = conn.getInfo()
            caps_xml = conn.getCapabilities()
            return info, conn.getVersion(), conn.getLibVersion(), caps_xml

        info, hv_version, lib_version, caps_xml = await self.call(facts)
        os_facts = await trio.to_thread.run_sync(hostinfo.os_facts)
        private = await trio.to_thread.run_sync(hostinfo.private_interface, self.private_device)
        # getInfo: [model, memory MiB, cpus, MHz, NUMA nodes, sockets per node, cores, threads]
        _model, mem_mib, cpus, mhz, nodes, sockets, _cores, _threads = info[:8]
        caps = ["hvm"] if "<os_type>hvm</os_type>" in caps_xml else []
        caps.append("snapshot")
        self.last_facts = HostFacts(
            cpus=int(cpus),
            cpu_sockets=int(nodes) * int(sockets),
            speed_mhz=int(mhz),
            memory=int(mem_mib) * 1024 * 1024,
            dom0_min_memory=0,
            caps=",".join(caps),
            hypervisor_version=_version(int(hv_version)),
            libvirt_version=_version(int(lib_version)),
            arch=os_facts.arch,
            hostname=os_facts.hostname,
            fqdn=os_facts.fqdn,
            os_name=os_facts.os_name,
            os_version=os_facts.os_version,
            kernel=os_facts.kernel,
            private=private,
        )
        return self.last_facts

    async def running_domains(self) -> dict[str, str]:
        """Running (or paused) domains: name -> libvirt state name."""

        def domains(conn: Any) -> dict[str, str]:
            out = {}
            for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                state, _reason = dom.state()
                out[dom.name()] = _STATE_NAMES.get(state, "unknown")
            return out

        return await self.call(domains)

    async def aclose(self) -> None:
        def close() -> None:
            with self._conn_lock:
                if self._conn is not None:
                    self._drop()

        await trio.to_thread.run_sync(close, limiter=self.limiter)


_STATE_NAMES = {
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutting-down",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
}
