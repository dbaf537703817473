"""``kvm-agent setup --secure-libvirtd`` (``-s``): libvirtd and QEMU on the agent's certificates.

The out-of-band counterpart of ``cloudstack-setup-agent -s`` (spec: certificates.md §1, §4).
In order, and idempotently: refuse unless cert-dir holds a valid certificate set; set TLS in
libvirtd.conf and qemu.conf (comments and other settings kept); make libvirtd listen
(socket activation or ``--listen``); open 16514/tcp; link the libvirt/QEMU PKI paths to
cert-dir and give QEMU standard DH parameters (agent.certs.dhparams); write
``libvirtd.tls.enabled=true``; restart libvirtd or tell the operator to.

System paths are taken under ``--root``; system commands run only when it is ``/`` (other
roots, e.g. a copy for tests, get them printed). ``--config`` and ``--cert-dir`` are used as
given. Every file is replaced atomically, keeping its mode. Nothing printed holds key
material: diffs redact secret-looking values and certificates are only named.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from agent.certs.certinfo import CertificateError
from agent.certs.dhparams import DH_PARAMS, GROUP_NAME, needs_dh_params
from agent.certs.store import CertStore
from agent.certs.system_pki import LIBVIRTD_CONF, PKI_LINKS, certificate_set
from agent.config import DEFAULT_CONFIG, ConfigError, cert_dir_of, read_properties
from agent.setup import confedit
from agent.setup.run import SetupError, SetupRun

TLS_PORT = "16514"
QEMU_CONF = "etc/libvirt/qemu.conf"
LIBVIRTD_SETTINGS = {
    "listen_tls": "1",
    "listen_tcp": "0",
    "tls_port": f'"{TLS_PORT}"',
    "auth_tls": '"none"',  # client certificates signed by the CA are the authentication
    "key_file": '"/etc/pki/libvirt/private/serverkey.pem"',
    "cert_file": '"/etc/pki/libvirt/servercert.pem"',
    "ca_file": '"/etc/pki/CA/cacert.pem"',
}
QEMU_SETTINGS = {
    "default_tls_x509_cert_dir": '"/etc/pki/qemu"',
    "default_tls_x509_verify": "1",
}
HEADER = "# Added by kvm-agent setup --secure-libvirtd"
TCP_NOTE = (
    '# kvm-agent setup -s: TCP stays closed; never listen on TCP with auth_tcp = "none"'
    " (anyone reaching it is root, CloudStack issue 5834)"
)
DEFAULTS_FILES = ("etc/default/libvirtd", "etc/sysconfig/libvirtd")  # Debian, RHEL
LISTEN_FLAG = "--listen"
TLS_SOCKET = "libvirtd-tls.socket"
TCP_SOCKET = "libvirtd-tcp.socket"
SOCKETS = ("libvirtd.socket", "libvirtd-ro.socket", "libvirtd-admin.socket", TLS_SOCKET, TCP_SOCKET)
PROPERTY = "libvirtd.tls.enabled"
FIREWALLS = ("auto", "nftables", "iptables", "ufw", "none")
_FIREWALL_ADD: dict[str, tuple[str, ...]] = {
    "ufw": ("ufw", "allow", f"{TLS_PORT}/tcp"),
    "nftables": tuple(f"nft insert rule inet filter input tcp dport {TLS_PORT} accept".split()),
    "iptables": tuple(f"iptables -I INPUT -p tcp -m tcp --dport {TLS_PORT} -j ACCEPT".split()),
}
_NFT_OPEN = re.compile(rf"tcp dport (?:{TLS_PORT}\b|\{{[^}}]*\b{TLS_PORT}\b[^}}]*\}}).*\baccept\b")
_UFW_OPEN = re.compile(rf"^{TLS_PORT}(?:/tcp)?\s+ALLOW\b", re.M)
_SYSTEMD_STATES = {"initializing", "starting", "running", "degraded", "maintenance", "stopping"}


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``setup`` subcommand to ``kvm-agent``'s subparsers."""
    parser = subparsers.add_parser(
        "setup",
        help="configure this host (out of band, as root)",
        description="Configure libvirtd and QEMU for TLS with the agent's certificates "
        "(what cloudstack-setup-agent -s does). Idempotent.",
    )
    parser.add_argument(
        "-s",
        "--secure-libvirtd",
        action="store_true",
        help="set up libvirtd TLS (port 16514) with the certificates in cert-dir",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print a diff of every change, change nothing"
    )
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help=f"agent.properties ({DEFAULT_CONFIG})"
    )
    parser.add_argument(
        "--cert-dir",
        type=Path,
        default=None,
        help="certificate directory (default: cert.dir from agent.properties, else its directory)",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=Path("/"),
        help="system root: libvirt, PKI and systemd paths are taken under it (default /); "
        "system commands are only printed unless it is /",
    )
    parser.add_argument(
        "--firewall",
        choices=FIREWALLS,
        default="auto",
        help="where to open 16514/tcp (default: auto-detect)",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``kvm-agent setup``; returns the exit code (0 done, 1 refused or failed, 2 usage)."""
    if not args.secure_libvirtd:
        print("kvm-agent setup: nothing to do (use -s/--secure-libvirtd)", file=sys.stderr)
        return 2
    setup = _Setup(root=args.root, dry_run=args.dry_run, out=sys.stdout)
    try:
        setup.secure_libvirtd(args.config, args.cert_dir, args.firewall)
    except SetupError as exc:
        print(f"kvm-agent setup: {exc}", file=sys.stderr)
        if setup.changed or setup.ran:
            setup.summary(failed=True)
        else:
            print("kvm-agent setup: nothing was changed", file=sys.stderr)
        return 1
    return 0


class _Setup(SetupRun):
    """The steps of ``setup --secure-libvirtd``, in order (see the module docstring)."""

    def __init__(self, *, root: Path, dry_run: bool, out: TextIO) -> None:
        super().__init__(root=root, dry_run=dry_run, out=out, header=HEADER)
        self.systemd = False

    def secure_libvirtd(self, config: Path, cert_dir: Path | None, firewall: str) -> None:
        # 1. Refuse, changing nothing, unless everything needed is there.
        try:
            props = read_properties(config)
        except ConfigError as exc:
            raise SetupError(f"refusing: {exc}") from None
        cert_dir = Path(os.path.abspath(cert_dir or cert_dir_of(props, config)))
        try:
            cert = certificate_set(cert_dir)
        except CertificateError as exc:
            raise SetupError(
                f"refusing: the certificate set in {cert_dir} is not usable: {exc}"
            ) from None
        libvirtd_conf = self.read_system_file(LIBVIRTD_CONF, required=True)
        qemu_conf = self.read_system_file(QEMU_CONF, required=True)
        self.say(
            f"certificate {cert.subject}, valid until {cert.not_after:%Y-%m-%d}, in {cert_dir}"
        )
        # 2, 3. TLS in libvirtd.conf and qemu.conf.
        self.edit(
            self.path(LIBVIRTD_CONF),
            libvirtd_conf,
            LIBVIRTD_SETTINGS,
            notes={"listen_tcp": TCP_NOTE},
        )
        self.edit(self.path(QEMU_CONF), qemu_conf, QEMU_SETTINGS)
        self.listen()  # 4.
        self.open_firewall(firewall)  # 5.
        self.link_pki(cert_dir)  # 6.
        self.set_tls_property(config, props)  # 7.
        self.finish()  # 8.

    def is_systemd(self) -> bool:
        if self.path("run/systemd/system").is_dir():
            return True
        return self.query_out("systemctl", "is-system-running") in _SYSTEMD_STATES

    def masked(self, unit: str) -> bool:
        link = self.path("etc/systemd/system") / unit
        return link.is_symlink() and os.readlink(link) == "/dev/null"

    def unit_enabled(self, unit: str) -> bool:
        if self.live:
            return self.query_out("systemctl", "is-enabled", unit) == "enabled"
        return (self.path("etc/systemd/system/sockets.target.wants") / unit).is_symlink()

    def listen(self) -> None:
        """Socket activation of libvirtd-tls.socket, or ``libvirtd --listen``.

        A systemd host already set up the traditional way (libvirtd.socket masked or
        ``--listen`` configured, as cloudstack-setup-agent does) stays that way: libvirtd
        refuses ``--listen`` together with activation sockets.
        """
        rel = next((r for r in DEFAULTS_FILES if self.path(r).exists()), DEFAULTS_FILES[0])
        defaults = self.path(rel)
        old = self.read_system_file(rel, required=False)
        token = confedit.get_value((old or b"").decode("utf-8", "surrogateescape"), "LIBVIRTD_ARGS")
        try:
            daemon_args = shlex.split(confedit.unquote(token)) if token else []
        except ValueError:
            daemon_args = []
        self.systemd = self.is_systemd()
        if self.systemd and not (self.masked("libvirtd.socket") or LISTEN_FLAG in daemon_args):
            self.say(f"libvirtd: systemd socket activation through {TLS_SOCKET}")
            if self.masked(TLS_SOCKET):
                self.command(("systemctl", "unmask", TLS_SOCKET), "it was masked")
            active = (
                not self.live or self.query_out("systemctl", "is-active", TLS_SOCKET) == "active"
            )
            if not (self.unit_enabled(TLS_SOCKET) and active):
                self.command(
                    ("systemctl", "enable", "--now", TLS_SOCKET), f"libvirtd TLS on {TLS_PORT}"
                )
            if self.unit_enabled(TCP_SOCKET):
                self.command(
                    ("systemctl", "disable", "--now", TCP_SOCKET), "secured mode keeps TCP closed"
                )
            return
        self.say(f"libvirtd: started with {LISTEN_FLAG} ({defaults})")
        if LISTEN_FLAG not in daemon_args:
            # --timeout would let a listening libvirtd exit with nothing to restart it.
            kept: list[str] = []
            rest = iter(daemon_args)
            for arg in rest:
                if arg in ("--timeout", "-t"):
                    next(rest, None)
                elif not arg.startswith("--timeout="):
                    kept.append(arg)
            value = '"' + " ".join([*kept, LISTEN_FLAG]) + '"'
            self.edit(defaults, old, {"LIBVIRTD_ARGS": value}, separator=confedit.SHELL_SEPARATOR)
        to_mask = [unit for unit in SOCKETS if not self.masked(unit)]
        if to_mask and self.live and shutil.which("systemctl") is None:
            self.say("no systemctl here: no systemd sockets to mask")
        elif to_mask:
            self.command(
                ("systemctl", "mask", *to_mask), f"{LISTEN_FLAG} excludes socket activation"
            )

    def detect_firewall(self) -> str | None:
        if "Status: active" in self.query_out("ufw", "status"):
            return "ufw"
        nft = self.query("nft", "list", "chain", "inet", "filter", "input")
        if nft is not None and nft.returncode == 0:
            return "nftables"
        if shutil.which("iptables"):
            return "iptables"
        return None

    def port_open(self, tool: str) -> bool:
        if tool == "ufw":
            return bool(_UFW_OPEN.search(self.query_out("ufw", "status")))
        if tool == "nftables":
            listing = self.query("nft", "list", "chain", "inet", "filter", "input")
            if listing is None or listing.returncode != 0:
                raise SetupError("nftables has no 'inet filter input' chain to open the port in")
            return bool(_NFT_OPEN.search(listing.stdout))
        check = self.query("iptables", "-C", *_FIREWALL_ADD["iptables"][2:])
        return check is not None and check.returncode == 0

    def open_firewall(self, choice: str) -> None:
        if choice == "none":
            self.say(f"firewall: not touched (--firewall none); {TLS_PORT}/tcp must be reachable")
            return
        if not self.live:
            if choice == "auto":
                self.manual.append(f"open {TLS_PORT}/tcp in the host's firewall")
                self.say(f"firewall: not detected (--root is not /); open {TLS_PORT}/tcp by hand")
            else:
                self.command(_FIREWALL_ADD[choice], f"open {TLS_PORT}/tcp")
            return
        tool = self.detect_firewall() if choice == "auto" else choice
        if tool is None:
            self.say(f"firewall: none found (ufw, nftables, iptables); {TLS_PORT}/tcp not opened")
            return
        if shutil.which(_FIREWALL_ADD[tool][0]) is None:
            raise SetupError(f"--firewall {tool}: {_FIREWALL_ADD[tool][0]} is not installed")
        if self.port_open(tool):
            self.say(f"firewall ({tool}): {TLS_PORT}/tcp is already open")
            return
        self.command(_FIREWALL_ADD[tool], f"open {TLS_PORT}/tcp")
        if tool != "ufw":
            self.manual.append(f"make the {tool} rule for {TLS_PORT}/tcp persistent")

    def link_pki(self, cert_dir: Path) -> None:
        pending = [
            (self.path(rel), cert_dir / name)
            for rel, name in PKI_LINKS.items()
            if not (
                self.path(rel).is_symlink() and Path(os.readlink(self.path(rel))) == cert_dir / name
            )
        ]
        for link, _ in pending:
            backup = link.with_name(link.name + ".kvm-agent.bak")
            if link.is_file() and not link.is_symlink() and not backup.exists():
                # A regular file there (another CA?) is kept, with its mode.
                if not self.dry_run:
                    shutil.copy2(link, backup)
                self.say(f"{'would keep' if self.dry_run else 'kept'} a copy of {link} as {backup}")
                self.changed.append(str(backup))
        if self.dry_run:
            for link, target in pending:
                self.say(f"would link {link} -> {target}")
                self.changed.append(str(link))
            if reason := needs_dh_params(self.root):
                self.say(f"would write {self.path(DH_PARAMS)} ({GROUP_NAME}; it is {reason})")
                self.changed.append(str(self.path(DH_PARAMS)))
            return
        try:
            linked = CertStore(cert_dir).link_pki(self.root)
        except CertificateError as exc:
            raise SetupError(str(exc)) from None
        except OSError as exc:
            raise SetupError(f"linking the PKI paths under {self.root} failed: {exc}") from None
        for changed in linked:
            if os.path.islink(changed):
                self.say(f"linked {changed} -> {os.readlink(changed)}")
            else:
                self.say(f"wrote {changed} (QEMU's DH parameters: {GROUP_NAME})")
        self.changed.extend(linked)

    def set_tls_property(self, config: Path, props: Mapping[str, str]) -> None:
        if props.get(PROPERTY, "").strip() == "true":
            return
        # The same comment-keeping edit as libvirtd.conf's (a properties line is key=value).
        self.edit(config, config.read_bytes(), {PROPERTY: "true"}, separator="=")

    def finish(self) -> None:
        if self.changed or self.ran:
            restart = ("systemctl", "restart", "libvirtd")
            if self.live and self.systemd and shutil.which("systemctl"):
                self.command(restart, "to load the TLS settings and certificates")
            else:
                self.manual.append(
                    "restart libvirtd (systemctl restart libvirtd, or service libvirtd restart)"
                )
        self.summary()

    def summary(self, *, failed: bool = False) -> None:
        anything = bool(self.changed or self.ran)
        if self.dry_run:
            if anything:
                title = "dry run, nothing was changed; it would change:"
            else:
                title = "dry run: nothing would change; libvirtd TLS is already set up"
        elif failed:
            title = "changed before the failure:"
        elif anything:
            title = "libvirtd TLS is set up; changed:"
        else:
            title = "nothing changed: libvirtd TLS was already set up"
        self.say(title)
        for item in self.changed:
            self.say(f"  {item}")
        for cmd in self.ran:
            self.say(f"  {'would run' if self.dry_run else 'ran'}: {cmd}")
        if self.manual:
            self.say("left to do by hand:")
            for item in self.manual:
                self.say(f"  {item}")
