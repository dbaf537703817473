"""Facts about this host from the OS: names, OS release, kernel, the private interface."""

from __future__ import annotations

import fcntl
import ipaddress
import os
import platform
import socket
import struct
from pathlib import Path

from attrs import frozen

_SIOCGIFADDR = 0x8915
_SIOCGIFNETMASK = 0x891B
_SIOCGIFHWADDR = 0x8927


@frozen
class Interface:
    name: str
    ip: str
    netmask: str
    mac: str


@frozen
class OsFacts:
    hostname: str
    fqdn: str
    os_name: str
    os_version: str
    kernel: str
    arch: str


def os_facts() -> OsFacts:
    release = _os_release()
    hostname = socket.gethostname()
    fqdn = socket.getfqdn(hostname)
    if not fqdn or fqdn.startswith("localhost"):  # /etc/hosts maps our name to loopback
        fqdn = hostname
    return OsFacts(
        hostname=hostname,
        fqdn=fqdn,
        os_name=release.get("NAME", platform.system()),
        os_version=release.get("VERSION_ID", ""),
        kernel=platform.release(),
        arch=platform.machine(),
    )


def _os_release() -> dict[str, str]:
    for path in (Path("/etc/os-release"), Path("/usr/lib/os-release")):
        try:
            text = path.read_text()
        except OSError:
            continue
        out = {}
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                out[key.strip()] = value.strip().strip('"')
        return out
    return {}


def default_route_interface() -> str | None:
    """The interface of the IPv4 default route, from /proc/net/route."""
    try:
        lines = Path("/proc/net/route").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 2 and fields[1] == "00000000":
            return fields[0]
    return None


def _ioctl(sock: socket.socket, request: int, name: str) -> bytes:
    return fcntl.ioctl(sock.fileno(), request, struct.pack("256s", name.encode()[:15]))


def interface(name: str) -> Interface | None:
    """IPv4 address, netmask and MAC of ``name``; None when it has no IPv4 address."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            ip = socket.inet_ntoa(_ioctl(sock, _SIOCGIFADDR, name)[20:24])
            mask = socket.inet_ntoa(_ioctl(sock, _SIOCGIFNETMASK, name)[20:24])
            hw = _ioctl(sock, _SIOCGIFHWADDR, name)[18:24]
        except OSError:
            return None
    return Interface(name=name, ip=ip, netmask=mask, mac=":".join(f"{b:02x}" for b in hw))


def private_interface(device: str = "") -> Interface | None:
    """``private.network.device``, or the default route's interface, or the first non-loopback
    interface with an IPv4 address (a host with no default route, such as a lab namespace)."""
    if device:
        return interface(device)
    default = default_route_interface()
    if default and (found := interface(default)):
        return found
    for _, name in socket.if_nameindex():
        if name != "lo" and (found := interface(name)):
            return found
    return None


def local_addresses() -> list[str]:
    """Every local IP except loopback and link-local (for certificate SANs)."""
    out: list[str] = []
    for _, name in socket.if_nameindex():
        iface = interface(name)
        if iface is None:
            continue
        addr = ipaddress.ip_address(iface.ip)
        if not (addr.is_loopback or addr.is_link_local) and iface.ip not in out:
            out.append(iface.ip)
    out.extend(a for a in _ipv6_addresses() if a not in out)
    return out


def _ipv6_addresses() -> list[str]:
    try:
        lines = Path("/proc/net/if_inet6").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        raw = line.split()[0]
        addr = ipaddress.IPv6Address(bytes.fromhex(raw))
        if not (addr.is_loopback or addr.is_link_local):
            out.append(str(addr))
    return out


def total_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
