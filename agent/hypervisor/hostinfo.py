"""Facts about this host from the OS: names, OS release, kernel, the private interface, and
the identity a certificate request names (no libvirt here)."""

from __future__ import annotations

import fcntl
import ipaddress
import os
import platform
import re
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
    cpu_mhz: int | None  # the CPU's nominal speed, when the OS tells it
    gateway: str | None  # the IPv4 default route's gateway
    iqn: str | None  # the iSCSI initiator name


def os_facts() -> OsFacts:
    name, version = os_name_version()
    hostname = socket.gethostname()
    fqdn = socket.getfqdn(hostname)
    if not fqdn or fqdn.startswith("localhost"):  # /etc/hosts maps our name to loopback
        fqdn = hostname
    return OsFacts(
        hostname=hostname,
        fqdn=fqdn,
        os_name=name,
        os_version=version,
        kernel=platform.release(),
        arch=platform.machine(),
        cpu_mhz=cpu_nominal_mhz(),
        gateway=default_gateway(),
        iqn=iscsi_initiator_name(),
    )


def os_name_version(etc: Path = Path("/etc")) -> tuple[str, str]:
    """``Host.OS`` and ``Host.OS.Version`` exactly as CloudStack's KVM agent reports them
    (its versions.sh): the management server compares ``Host.OS`` with the cluster's other
    hosts, so a mixed cluster needs the same strings. redhat-release first (the name is
    what precedes "release", the version the word after it), then lsb-release, then
    os-release; empty values stay empty (the Java agent then omits the key)."""
    redhat, lsb, osrel = etc / "redhat-release", etc / "lsb-release", etc / "os-release"
    if redhat.exists():
        line = _read(redhat).partition("\n")[0]
        before, sep, after = line.partition("release")
        version = after.split()[0] if sep and after.split() else ""
        if not version and osrel.exists():
            fields = _key_values(_read(osrel))
            return fields.get("NAME", ""), fields.get("VERSION_ID", "")
        return before.strip(), version
    if lsb.exists():
        fields = _key_values(_read(lsb))
        return fields.get("DISTRIB_ID", ""), fields.get("DISTRIB_RELEASE", "")
    if osrel.exists():
        fields = _key_values(_read(osrel))
        return fields.get("NAME", ""), fields.get("VERSION_ID", "")
    return "Unknown Linux", "X.Y"


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _key_values(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip().strip('"').strip("'").strip()
    return out


_GHZ = re.compile(r"(\d\.\d+)GHz")


def cpu_nominal_mhz(
    cpuinfo: Path = Path("/proc/cpuinfo"),
    max_freq: Path = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"),
) -> int | None:
    """The speed the Java agent reports: the GHz figure of the CPU's model name, else the
    maximum frequency; None when neither is known (the caller falls back to libvirt's
    current, frequency-scaled figure)."""
    for line in _read(cpuinfo).splitlines():
        if line.lower().startswith("model name"):
            match = _GHZ.search(line)
            if match:
                return int(float(match.group(1)) * 1000)
            break
    try:
        return int(_read(max_freq).strip()) // 1000 or None
    except ValueError:
        return None


def default_gateway(route: Path = Path("/proc/net/route")) -> str | None:
    """The gateway of the first IPv4 default route (the Java agent's ``ip route show
    default``); None without one, or when the default route has no gateway."""
    for fields in (line.split() for line in _read(route).splitlines()[1:]):
        if len(fields) > 3 and fields[1] == "00000000" and int(fields[3], 16) & 0x2:
            gateway = socket.inet_ntoa(struct.pack("<I", int(fields[2], 16)))
            return gateway if gateway != "0.0.0.0" else None
    return None


def iscsi_initiator_name(path: Path = Path("/etc/iscsi/initiatorname.iscsi")) -> str | None:
    """``InitiatorName=`` of open-iscsi's file, as the Java agent sends it (``iqn``)."""
    for line in _read(path).splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key == "InitiatorName" and value.strip():
            return value.strip()
    return None


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


def host_identity() -> tuple[str, list[str], list[str]]:
    """(FQDN, host names, local IPs except loopback and link-local) for the CSR."""
    facts = os_facts()
    names = [n for n in dict.fromkeys([facts.hostname]) if n and n != facts.fqdn]
    return facts.fqdn, names, local_addresses()


def total_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
