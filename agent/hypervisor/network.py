"""The host's network as the management server asks about it: traffic labels, and pings.

Traffic labels (CheckNetworkCommand) name Linux bridges or interfaces. CloudStack's KVM agent
(LibvirtComputingResource.checkNetwork / matchPifFileInDirectory) counts a bridge as present
only when one of its ports is a "physical" uplink, a name starting with eth, bond, vlan, vx,
em, ens, eno, enp, team, enx, dummy, lo, p<N>p<N>, vni or enc (a bridge holding only VM taps
carries no traffic off the host); a name that is no bridge but an interface counts as present.

Pings (PingTestCommand) are ICMP echoes sent by the agent itself (no ``ping`` binary needed),
and, for a VM behind a virtual router, ``ping`` run on the router over ssh, as CloudStack's
``pingtest.sh`` does.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import socket
import struct
from pathlib import Path

import trio
from attrs import frozen

from agent.hypervisor import hostinfo

SYS = Path("/sys")
# LibvirtComputingResource.ifNamePatterns, each matched at the start of a port's name.
UPLINK = re.compile(r"eth|bond|vlan|vx|em|ens|eno|enp|team|enx|dummy|lo|p\d+p\d+|vni|enc")
_IFNAME = re.compile(r"[^/\s:]{1,15}")
ROUTER_SSH_PORT = 3922  # CloudStack's system VMs listen for ssh there


@frozen
class MissingNetwork:
    name: str
    why: str

    def __str__(self) -> str:
        return f"{self.name} ({self.why})"


def label_problem(name: str, sys_root: Path = SYS) -> str | None:
    """Why traffic label ``name`` is not usable on this host, or None if it is."""
    if not _IFNAME.fullmatch(name) or name in (".", ".."):
        return "not a valid interface name"
    ports_dir = sys_root / "devices" / "virtual" / "net" / name / "brif"
    if ports_dir.is_dir():
        ports = sorted(p.name for p in ports_dir.iterdir())
        if any(UPLINK.match(port) for port in ports):
            return None
        held = ", ".join(ports) if ports else "none"
        return (
            f"bridge without a physical uplink (ports: {held}); CloudStack needs one whose "
            "name starts with eth, bond, en..., team, vlan or vx"
        )
    if (sys_root / "class" / "net" / name).is_dir():
        return None
    return "no bridge or interface of that name on this host"


def missing_networks(labels: list[str | None], sys_root: Path = SYS) -> list[MissingNetwork]:
    """The labels that are not usable, in order, each once; an unset label (None) passes."""
    missing: list[MissingNetwork] = []
    seen: set[str] = set()
    for name in labels:
        if name is None or name in seen:
            continue
        seen.add(name)
        why = label_problem(name, sys_root)
        if why is not None:
            missing.append(MissingNetwork(name, why))
    return missing


# --- pings --------------------------------------------------------------------------


class PingError(Exception):
    """An echo could not even be sent (a bad address, no permission); the text says which."""


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _open_icmp(family: int) -> tuple[trio.socket.SocketType, bool]:
    """A raw ICMP socket (root), else an unprivileged ping socket; (socket, raw)."""
    proto = socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6
    try:
        return trio.socket.socket(family, socket.SOCK_RAW, proto), True
    except PermissionError:
        pass
    try:
        return trio.socket.socket(family, socket.SOCK_DGRAM, proto), False
    except OSError as exc:
        raise PingError(
            f"cannot send ICMP echo requests: {exc.strerror} (the agent needs root or "
            "CAP_NET_RAW, or net.ipv4.ping_group_range to include its group)"
        ) from None


async def echo(address: str, timeout: float) -> bool:
    """One ICMP echo to ``address``; True when its reply arrives within ``timeout`` s."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise PingError(f"{address!r:.60} is not an IP address") from None
    v4 = ip.version == 4
    family = socket.AF_INET if v4 else socket.AF_INET6
    request_type, reply_type = (8, 0) if v4 else (128, 129)
    sock, raw = _open_icmp(family)
    with sock:
        ident = os.getpid() & 0xFFFF
        seq = int.from_bytes(os.urandom(2), "big")
        payload = b"kvm-agent pingtest" + os.urandom(8)
        header = struct.pack("!BBHHH", request_type, 0, 0, ident, seq)
        packet = header[:2] + struct.pack("!H", _checksum(header + payload)) + header[4:] + payload
        try:
            await sock.sendto(packet, (str(ip), 0))
        except OSError as exc:
            if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
                return False
            raise PingError(f"cannot send an ICMP echo to {ip}: {exc.strerror}") from None
        with trio.move_on_after(timeout):
            while True:
                data, peer = await sock.recvfrom(65535)
                if raw and v4:
                    data = data[(data[0] & 0x0F) * 4 :]  # a raw IPv4 socket gives the IP header
                if peer[0] != str(ip) or len(data) < 8:
                    continue
                kind, _code, _sum, got_id, got_seq = struct.unpack("!BBHHH", data[:8])
                # A ping socket rewrites the identifier: match it on the sequence alone.
                if kind == reply_type and got_seq == seq and (got_id == ident or not raw):
                    return True
    return False


async def ping_host(address: str, timeout: float = 2.0) -> str | None:
    """pingtest.sh -h: None when ``address`` answers; otherwise why, after asking the
    default gateway (to tell "that host is down" from "this host is cut off")."""
    if await echo(address, timeout) or await echo(address, timeout):
        return None
    gateway = await trio.to_thread.run_sync(hostinfo.default_gateway)
    if gateway is None:
        return f"Unable to ping computing host {address}; this host has no default route"
    if not await echo(gateway, timeout):
        return f"Unable to ping computing host {address}, nor the default gateway {gateway}"
    return f"Unable to ping computing host {address} (the default gateway {gateway} answers)"


async def ping_through_router(
    router: str, vm: str, private_key: Path, timeout: float = 8.0
) -> str | None:
    """pingtest.sh -i/-p: the router answers, then the VM answers the router (ping, else
    arping), asked over ssh with the host's system-VM key. None on success, else why."""
    for name, value in (("router", router), ("VM", vm)):
        try:
            ipaddress.ip_address(value)
        except ValueError:
            return f"the {name} address {value!r:.60} is not an IP address"
    if not (await echo(router, 2.0) or await echo(router, 2.0)):
        return f"Unable to ping the routing domain {router}"
    ssh = [
        "ssh",
        *("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"),
        *("-o", "BatchMode=yes", "-o", "ConnectTimeout=3", "-o", "LogLevel=ERROR"),
        *("-p", str(ROUTER_SSH_PORT), "-i", str(private_key), f"root@{router}"),
    ]
    last = ""
    with trio.move_on_after(timeout):
        for remote in (f"ping -c 1 -n -q {vm}", f"arping -c 1 -q {vm}"):
            done = await trio.run_process(
                [*ssh, remote], capture_stdout=True, capture_stderr=True, check=False
            )
            if done.returncode == 0:
                return None
            last = done.stderr.decode(errors="replace").strip()[-300:]
        return f"Unable to ping the vm {vm} from the router {router}: {last or 'no answer'}"
    return f"Unable to ping the vm {vm} from the router {router}: no answer within {timeout:g}s"
