"""agent.properties: parsed with javaproperties, validated key by key.

Every invalid value stops the agent at start with a message naming the key. Command-line
``key=value`` pairs override the file.
"""

from __future__ import annotations

import enum
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import javaproperties
from attrs import frozen

from agent.mshosts import (
    HostListError,
    LbAlgorithm,
    host_entry_problem,
    parse_host_list,
    split_host_port,
)

DEFAULT_CONFIG = Path("/etc/cloudstack/agent/agent.properties")
# CloudStack's KVM resource class: the MS knows this host as "<guid>-LibvirtComputingResource".
RESOURCE_NAME = "LibvirtComputingResource"


def host_guid(guid: str) -> str:
    """The host's guid as the MS knows it, for agent.properties' ``guid``."""
    return f"{guid}-{RESOURCE_NAME}"


class ConfigError(Exception):
    """agent.properties (or an override) is missing a key or holds an invalid value."""


class NativeTls(enum.Enum):
    """migration.native.tls: whether guest memory (and NBD disk data) is encrypted by QEMU
    itself when the host is secured, beyond libvirt's own TLS control channel."""

    REQUIRED = "required"  # native TLS or no migration
    PREFERRED = "preferred"  # native TLS; without it where the destination cannot (warned)
    OFF = "off"  # control channel only: guest memory crosses the network in clear


def _native_tls(key: str) -> Any:
    legacy = {"true": NativeTls.REQUIRED, "false": NativeTls.OFF}  # the setting's old values

    def convert(raw: str) -> NativeTls:
        value = raw.strip().lower()
        if value in legacy:
            return legacy[value]
        try:
            return NativeTls(value)
        except ValueError:
            raise ConfigError(
                f"invalid value for '{key}': {raw!r} (expected required, preferred or off; "
                "true and false still mean required and off)"
            ) from None

    return convert


def _int(key: str, low: int | None = None, high: int | None = None) -> Any:
    def convert(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ConfigError(f"invalid value for '{key}': {raw!r} is not an integer") from None
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"{low if low is not None else '-inf'}..{high if high is not None else 'inf'}"
            raise ConfigError(f"invalid value for '{key}': {value} is outside {bounds}")
        return value

    return convert


def _float(key: str, low: float = 0.0, high: float = 86400.0) -> Any:
    def convert(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ConfigError(f"invalid value for '{key}': {raw!r} is not a number") from None
        if not math.isfinite(value) or not low <= value <= high:
            raise ConfigError(
                f"invalid value for '{key}': {raw.strip()} is outside {low:g}..{high:g}"
            )
        return value

    return convert


def _bool(key: str) -> Any:
    def convert(raw: str) -> bool:
        value = raw.strip().lower()
        if value in ("true", "yes", "1", "on"):
            return True
        if value in ("false", "no", "0", "off", ""):
            return False
        raise ConfigError(f"invalid value for '{key}': {raw!r} is not true or false")

    return convert


def _str(_key: str) -> Any:
    return lambda raw: raw.strip()


def _listen(key: str) -> Any:
    """``host:port`` to bind (``[v6]:port``), or empty for off. The host is required: an
    endpoint is bound only where the operator says (0.0.0.0 for every interface)."""

    def convert(raw: str) -> str:
        value = raw.strip()
        if not value:
            return ""
        host, port = split_host_port(value, -1)
        problem = host_entry_problem(value) if host and port >= 0 else "not host:port"
        if problem is not None:
            raise ConfigError(
                f"invalid value for '{key}': {value!r:.80}: {problem} "
                "(e.g. 127.0.0.1:9108, 0.0.0.0:9108 for every interface; empty for off)"
            )
        return value

    return convert


# key -> (attribute, converter factory, default as written in agent.properties or None).
# An attribute of None: a key of CloudStack's agent.properties that is accepted (and
# validated) but not used by this agent.
_KEYS: dict[str, tuple[str | None, Any, str | None]] = {
    "guid": ("guid", _str, None),
    "host": ("host", _str, "localhost"),
    "port": ("port", lambda k: _int(k, 1, 65535), "8250"),
    "zone": ("zone", _str, "default"),
    "pod": ("pod", _str, "default"),
    "cluster": ("cluster", _str, "default"),
    "workers": ("workers", lambda k: _int(k, 1, 1000), "5"),
    "ping.retries": ("ping_retries", lambda k: _int(k, 1, 1000), "5"),
    "backoff.seconds": ("backoff_seconds", lambda k: _float(k, 1, 3600), "5"),
    "host.lb.check.interval": ("lb_check_interval", _float, "0"),
    # Calls that reach another host are bounded, by 30 s at most.
    "connect.timeout": ("connect_timeout", lambda k: _float(k, 0.1, 30), "10"),
    "handshake.timeout": ("handshake_timeout", lambda k: _float(k, 0.1, 30), "30"),
    "startup.timeout": ("startup_timeout", lambda k: _float(k, 0.1, 30), "30"),
    "shutdown.grace.seconds": ("shutdown_grace", lambda k: _float(k, 0, 3600), "30"),
    "command.buffer.bytes": ("command_buffer_bytes", lambda k: _int(k, 65536, 1 << 36), "67108864"),
    "hypervisor.type": (None, _str, "kvm"),  # KVM is the only one
    "hypervisor.uri": ("hypervisor_uri", _str, "qemu:///system"),
    "private.network.device": ("private_network_device", _str, ""),
    "public.network.device": ("public_network_device", _str, "cloudbr0"),
    "guest.network.device": ("guest_network_device", _str, ""),
    "stop.script.timeout": ("stop_timeout", lambda k: _float(k, 0, 3600), "120"),
    "vm.domain.type": ("vm_domain_type", _str, "kvm"),
    "host.reserved.mem.mb": ("host_reserved_mem_mb", lambda k: _int(k, 0), "1024"),
    "cert.dir": ("cert_dir", _str, ""),
    "state.dir": ("state_dir", _str, "/var/lib/cloudstack/agent"),
    "ssl.bootstrap.insecure": ("bootstrap_insecure", _bool, "false"),
    "ssl.verify.hostname": ("verify_hostname", _bool, "false"),
    "log.level": ("log_level", _str, "info"),
    "vm.migrate.speed": ("migrate_speed", lambda k: _int(k, -1), "-1"),
    "vm.migrate.downtime": ("migrate_downtime", lambda k: _int(k, -1), "-1"),
    "vm.migrate.pauseafter": ("migrate_pause_after", lambda k: _int(k, -1), "-1"),
    "vm.migrate.wait": ("migrate_wait", lambda k: _int(k, -1), "-1"),
    "migration.native.tls": ("migration_native_tls", _native_tls, "required"),
    "migration.max.outgoing": ("max_outgoing_migrations", lambda k: _int(k, 1), "2"),
    "migration.max.incoming": ("max_incoming_migrations", lambda k: _int(k, 1), "2"),
    "libvirtd.tls.enabled": ("libvirtd_tls_enabled", _bool, "false"),
    "cert.expiry.warn.days": ("cert_expiry_warn_days", lambda k: _int(k, 0), "30"),
    "libvirtd.reload": ("libvirtd_reload", _str, "auto"),
    "pki.root": ("pki_root", _str, "/"),
    "keystore.passphrase": (None, _str, ""),  # a Java keystore's; PEM files need none
    "ssh.keys.dir": ("ssh_keys_dir", _str, "/root/.ssh"),  # ModifySshKeysCommand's keys
    "metrics.listen": ("metrics_listen", _listen, ""),
    "local.storage.uuid": ("local_storage_uuid", _str, ""),
    "local.storage.path": ("local_storage_path", _str, "/var/lib/libvirt/images/"),
    "mount.path": ("mount_path", _str, "/mnt"),
    "ha.heartbeat.sharedmountpoint": ("ha_heartbeat_shared_mount_point", _bool, "false"),
    "ha.heartbeat.interval": ("ha_heartbeat_interval", lambda k: _float(k, 0.1, 3600), "10"),
    "ha.heartbeat.timeout": ("ha_heartbeat_timeout", lambda k: _float(k, 1, 3600), "60"),
    "ha.fence.reboot": ("ha_fence_reboot", _bool, "false"),
    # qemu-img runs (clone, create, copy) whose command carries no wait of its own.
    "qemuimg.timeout": ("qemuimg_timeout", lambda k: _float(k, 1, 7 * 86400), "10800"),
}
# What SIGHUP applies (listed in etc/agent.properties); any other key keeps its value until
# a restart, and a change to it is logged as needing one. Identity, the hypervisor
# connection and the directories the agent holds open are fixed for the process.
RELOADABLE: frozenset[str] = frozenset(_KEYS) - {
    "guid",
    "zone",
    "pod",
    "cluster",
    "hypervisor.type",
    "hypervisor.uri",
    "private.network.device",
    "cert.dir",
    "state.dir",
    "pki.root",
    "metrics.listen",
    "local.storage.uuid",
    "local.storage.path",
    "mount.path",
    "ha.heartbeat.sharedmountpoint",
}
_LOG_LEVELS = ("debug", "info", "warning", "error")
_RELOAD_MODES = ("auto", "update-tls", "restart", "none")
_DOMAIN_TYPES = ("kvm", "qemu")


@frozen
class AgentConfig:
    """The validated configuration. ``path`` is where it was read from (for SIGHUP)."""

    path: Path | None
    guid: str
    host: str
    ms_hosts: tuple[str, ...]
    lb_algorithm: LbAlgorithm
    port: int
    zone: str
    pod: str
    cluster: str
    workers: int
    ping_retries: int
    backoff_seconds: float
    lb_check_interval: float
    connect_timeout: float
    handshake_timeout: float
    startup_timeout: float
    shutdown_grace: float
    command_buffer_bytes: int
    hypervisor_uri: str
    private_network_device: str
    public_network_device: str
    guest_network_device: str
    stop_timeout: float
    host_reserved_mem_mb: int
    cert_dir: Path
    state_dir: Path
    bootstrap_insecure: bool
    verify_hostname: bool
    log_level: str
    migrate_speed: int
    migrate_downtime: int
    migrate_pause_after: int
    migrate_wait: int
    migration_native_tls: NativeTls
    max_outgoing_migrations: int
    max_incoming_migrations: int
    libvirtd_tls_enabled: bool
    cert_expiry_warn_days: int
    libvirtd_reload: str
    vm_domain_type: str
    pki_root: Path
    ssh_keys_dir: Path
    metrics_listen: str
    local_storage_uuid: str
    local_storage_path: str
    mount_path: str
    ha_heartbeat_shared_mount_point: bool
    ha_heartbeat_interval: float
    ha_heartbeat_timeout: float
    ha_fence_reboot: bool
    qemuimg_timeout: float
    # (uuid, absolute path) of each local pool: local.storage.uuid/path paired in order.
    local_storage: tuple[tuple[str, str], ...]

    @property
    def host_guid(self) -> str:
        """``<guid>-LibvirtComputingResource``: the guid in StartupRoutingCommand and VM
        reports."""
        return host_guid(self.guid)

    @classmethod
    def from_properties(cls, props: Mapping[str, str], *, path: Path | None = None) -> AgentConfig:
        values: dict[str, Any] = {}
        for key, (attr, factory, default) in _KEYS.items():
            raw = props.get(key, default)
            if raw is None or (key == "guid" and not raw.strip()):
                raise ConfigError(f"missing required key '{key}' in agent.properties")
            value = factory(key)(raw)
            if attr is not None:
                values[attr] = value
        if values["log_level"].lower() not in _LOG_LEVELS:
            raise ConfigError(
                f"invalid value for 'log.level': {values['log_level']!r} "
                f"(expected one of {', '.join(_LOG_LEVELS)})"
            )
        values["log_level"] = values["log_level"].lower()
        try:
            values["ms_hosts"], values["lb_algorithm"] = parse_host_list(values["host"])
        except HostListError as exc:
            raise ConfigError(f"invalid value for 'host': {exc}") from None
        values["cert_dir"] = cert_dir_of(props, path)
        values["state_dir"] = Path(values["state_dir"])
        values["pki_root"] = Path(values["pki_root"] or "/")
        values["ssh_keys_dir"] = Path(values["ssh_keys_dir"] or "/root/.ssh")
        if values["libvirtd_reload"] not in _RELOAD_MODES:
            raise ConfigError(
                f"invalid value for 'libvirtd.reload': {values['libvirtd_reload']!r} "
                f"(expected one of {', '.join(_RELOAD_MODES)})"
            )
        if values["vm_domain_type"] not in _DOMAIN_TYPES:
            raise ConfigError(
                f"invalid value for 'vm.domain.type': {values['vm_domain_type']!r} "
                "(expected kvm or qemu)"
            )
        values["local_storage"] = local_pools(
            values["local_storage_uuid"], values["local_storage_path"]
        )
        if not values["mount_path"].startswith("/"):
            raise ConfigError(
                f"invalid value for 'mount.path': {values['mount_path']!r} is not absolute"
            )
        if values["ha_heartbeat_interval"] >= values["ha_heartbeat_timeout"]:
            raise ConfigError(
                "invalid values for 'ha.heartbeat.interval' and 'ha.heartbeat.timeout': the "
                f"heartbeat must be written more often ({values['ha_heartbeat_interval']:g} s) "
                f"than the age at which it reads as dead ({values['ha_heartbeat_timeout']:g} s)"
            )
        return cls(path=path, **values)

    @classmethod
    def load(cls, path: Path, overrides: Sequence[str] = ()) -> AgentConfig:
        return cls.from_properties(read_properties(path, overrides), path=path)

    def reload(self) -> AgentConfig:
        """Re-read the same file; command-line overrides are not re-applied."""
        if self.path is None:
            return self
        return AgentConfig.load(self.path)

    def apply_reload(self, new: AgentConfig) -> tuple[AgentConfig, list[str]]:
        """The configuration in effect after SIGHUP: ``new`` for the reloadable keys, this
        one's values for the others. Also returns the keys that changed but need a restart."""
        kept: dict[str, Any] = {}
        restart = []
        for key, (attr, _factory, _default) in _KEYS.items():
            if key in RELOADABLE or attr is None:
                continue
            if getattr(new, attr) != getattr(self, attr):
                restart.append(key)
            kept[attr] = getattr(self, attr)
        kept["local_storage"] = self.local_storage  # derived from two restart-only keys
        return attrs.evolve(new, **kept), restart


_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def local_pools(uuids: str, paths: str) -> tuple[tuple[str, str], ...]:
    """``local.storage.uuid`` and ``local.storage.path``, comma-separated lists of the same
    length (as the Java agent reads them; paths made absolute). No uuid: no local pool (the
    Java agent would invent a new one at every start)."""
    if not uuids.strip():
        return ()
    uuid_list = [u.strip() for u in uuids.split(",")]
    path_list = [os.path.abspath(p.strip()) for p in paths.split(",")]
    if len(uuid_list) != len(path_list):
        raise ConfigError(
            "invalid values for 'local.storage.uuid' and 'local.storage.path': "
            f"{len(uuid_list)} uuid(s) for {len(path_list)} path(s); give one path per uuid"
        )
    for uuid in uuid_list:
        if not _UUID.fullmatch(uuid):
            raise ConfigError(f"invalid value for 'local.storage.uuid': {uuid!r:.60} is not a UUID")
    return tuple(zip(uuid_list, path_list, strict=True))


def cert_dir_of(props: Mapping[str, str], config_path: Path | None) -> Path:
    """``cert.dir`` as agent.properties sets it; by default the directory agent.properties is
    in (the working directory for a configuration that was not read from a file)."""
    value = props.get("cert.dir", "").strip()
    if value:
        return Path(value)
    return config_path.parent if config_path is not None else Path.cwd()


def parse_overrides(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"invalid override {pair.split('=')[0]!r}: expected key=value")
        out[key.strip()] = value
    return out


def read_properties(path: Path, overrides: Sequence[str] = ()) -> dict[str, str]:
    try:
        with path.open(encoding="latin-1") as fh:  # Java properties files are ISO 8859-1
            props: dict[str, str] = dict(javaproperties.load(fh))
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"{path} is not a valid properties file: {exc}") from None
    props.update(parse_overrides(overrides))
    return props
