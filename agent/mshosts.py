"""The management servers' list: ``host=`` of agent.properties and what the MS sends in its
place (hosts, the load-balancing algorithm, the backoff), each entry checked before it is
ever dialled."""

from __future__ import annotations

import enum
import ipaddress
import math
import re


class HostListError(ValueError):
    """A host list that cannot be used; the text says which entry and why."""


class LbAlgorithm(enum.Enum):
    ROUND_ROBIN = "roundrobin"
    SHUFFLE = "shuffle"
    STATIC = "static"


def parse_algorithm(name: str | None) -> LbAlgorithm | None:
    """An algorithm name from the MS ("roundrobin", "Shuffle"...); None if absent or unknown."""
    try:
        return LbAlgorithm(name.strip().lower()) if name else None
    except ValueError:
        return None


MS_BACKOFF_RANGE = (1.0, 300.0)  # what backoff.seconds from the MS is clamped to


def backoff_from_ms(raw: object) -> tuple[float | None, str | None]:
    """``backoff.seconds`` as StartupAnswer.params carries it -> (the seconds to use, or
    None to keep ours; a warning for the log, or None)."""
    what = f"backoff.seconds={raw!r:.40} from the management server"
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None, f"ignoring {what}: not a number"
    if not math.isfinite(value):
        return None, f"ignoring {what}: not finite"
    low, high = MS_BACKOFF_RANGE
    clamped = min(max(value, low), high)
    if clamped != value:
        return clamped, f"{what} is outside {low:g}..{high:g}s; using {clamped:g}s"
    return value, None


def split_host_port(entry: str, default_port: int) -> tuple[str, int]:
    """``host`` or ``host:port`` (IPv6 in brackets: ``[::1]:8250``)."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else default_port
    host, sep, port = entry.rpartition(":")
    if sep and port.isdigit() and ":" not in host:
        return host, int(port)
    return entry, default_port


_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def host_entry_problem(entry: str) -> str | None:
    """Why ``entry`` (``host`` or ``host:port``) cannot be dialled, or None if it can.

    The checks are those the resolver makes (IDNA encoding, 63-octet labels, 253 in all),
    done up front so that a bad name from the MS is skipped instead of failing in
    getaddrinfo at every connect.
    """
    if not isinstance(entry, str) or not entry or len(entry) > 300:
        return "not a host name or address"
    host, port = split_host_port(entry, 1)
    if not 1 <= port <= 65535:
        return f"port {port} is outside 1..65535"
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    try:
        ascii_name = host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        return f"not a valid host name ({exc})"
    labels = ascii_name[:-1].split(".") if ascii_name.endswith(".") else ascii_name.split(".")
    if len(ascii_name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return "not a valid host name (letters, digits and '-', labels of 1-63 octets)"
    return None


def parse_host_list(value: str) -> tuple[tuple[str, ...], LbAlgorithm]:
    """``ip1,ip2@shuffle`` -> (("ip1", "ip2"), SHUFFLE). The first host is the preferred one."""
    hosts_part, _, algo = value.partition("@")
    hosts = tuple(h.strip() for h in hosts_part.split(",") if h.strip())
    if not hosts:
        raise HostListError("no management server address")
    for host in hosts:
        problem = host_entry_problem(host)
        if problem is not None:
            raise HostListError(f"{host!r:.80} is {problem}")
    try:
        algorithm = LbAlgorithm(algo.strip().lower()) if algo.strip() else LbAlgorithm.ROUND_ROBIN
    except ValueError:
        raise HostListError(
            f"unknown algorithm '@{algo}' (expected @roundrobin, @shuffle or @static)"
        ) from None
    return hosts, algorithm
