"""What the host says about itself when it registers: CPUs, memory, capabilities, OS, names.

Read from libvirt when it is there; :func:`os_only_facts` when it is not (the agent still
registers, as the Java agent does, rather than stay away from the MS).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from attrs import frozen

from agent.hypervisor import hostinfo


@frozen
class HostFacts:
    cpus: int
    cpu_sockets: int
    speed_mhz: int
    memory: int  # bytes, MemTotal (before host.reserved.mem.mb is set aside)
    caps: str
    arch: str
    hostname: str
    os_name: str
    os_version: str
    kernel: str
    gateway: str | None
    iqn: str | None
    private: hostinfo.Interface | None


def _node_info(conn: Any) -> tuple[list[Any], str]:
    return conn.getInfo(), conn.getCapabilities()


async def read_facts(
    call: Callable[[Callable[[Any], Any]], Awaitable[Any]], private_device: str
) -> HostFacts:
    """The facts, libvirt's read through ``call`` (Hypervisor.call), the OS's in threads."""
    info, caps_xml = await call(_node_info)
    os_facts = await trio.to_thread.run_sync(hostinfo.os_facts)
    private = await trio.to_thread.run_sync(hostinfo.private_interface, private_device)
    # getInfo: [model, memory MiB, cpus, MHz, NUMA nodes, sockets per node, cores, threads]
    _model, _mem_mib, cpus, mhz, nodes, sockets, _cores, _threads = info[:8]
    caps = ["hvm"] if "<os_type>hvm</os_type>" in caps_xml else []
    caps.append("snapshot")
    memory = await trio.to_thread.run_sync(hostinfo.total_memory)
    return _facts(
        os_facts,
        private,
        cpus=int(cpus),
        cpu_sockets=int(nodes) * int(sockets),
        # As the Java agent: the nominal speed, libvirt's current one only without it;
        # the memory from the kernel (libvirt rounds it to MiB).
        speed_mhz=os_facts.cpu_mhz or int(mhz),
        memory=memory,
        caps=",".join(caps),
    )


def os_only_facts(private_device: str = "") -> HostFacts:
    """What registration can say while libvirtd is away and no earlier facts are known."""
    os_facts = hostinfo.os_facts()
    return _facts(
        os_facts,
        hostinfo.private_interface(private_device),
        cpus=os.cpu_count() or 1,
        cpu_sockets=1,
        speed_mhz=os_facts.cpu_mhz or 0,
        memory=hostinfo.total_memory(),
        caps="hvm,snapshot",
    )


def _facts(
    os_facts: hostinfo.OsFacts, private: hostinfo.Interface | None, **libvirt_facts: Any
) -> HostFacts:
    return HostFacts(
        arch=os_facts.arch,
        hostname=os_facts.hostname,
        os_name=os_facts.os_name,
        os_version=os_facts.os_version,
        kernel=os_facts.kernel,
        gateway=os_facts.gateway,
        iqn=os_facts.iqn,
        private=private,
        **libvirt_facts,
    )
