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
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

from agent import confedit
from agent.certs.dhparams import DH_PARAMS, GROUP_NAME, needs_dh_params
from agent.certs.keys import CertificateError
from agent.certs.store import CertStore
from agent.certs.system_pki import LIBVIRTD_CONF, PKI_LINKS, certificate_set
from agent.config import DEFAULT_CONFIG, ConfigError, read_properties, set_property

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


class SetupError(Exception):
    """A precondition is not met or a step failed; the message says which."""


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


class _Setup:
    def __init__(self, *, root: Path, dry_run: bool, out: TextIO) -> None:
        self.root = Path(os.path.abspath(root))
        self.live = self.root == Path("/")  # only then are system commands run
        self.dry_run = dry_run
        self.out = out
        self.systemd = False
        self.changed: list[str] = []  # files and links changed (dry run: would be)
        self.ran: list[str] = []  # commands run (dry run: would be)
        self.manual: list[str] = []  # left to the operator

    # --- helpers ----------------------------------------------------------------------

    def say(self, message: str) -> None:
        print(message, file=self.out)

    def path(self, rel: str) -> Path:
        return self.root / rel

    def read_system_file(self, rel: str, *, required: bool) -> bytes | None:
        path = self.path(rel)
        if not self.live and path.exists():
            real = Path(os.path.realpath(path))
            if not real.is_relative_to(Path(os.path.realpath(self.root))):
                raise SetupError(f"{path} leads outside --root {self.root} (to {real})")
        try:
            return path.read_bytes()
        except FileNotFoundError:
            if required:
                raise SetupError(
                    f"{path} does not exist (is libvirt's daemon installed?)"
                ) from None
            return None
        except OSError as exc:
            raise SetupError(f"cannot read {path}: {exc.strerror}") from None

    def write(self, path: Path, old: bytes | None, new: bytes) -> None:
        if old == new:
            return
        if self.dry_run:
            self.out.write(confedit.unified_diff(path, old, new))
        else:
            confedit.replace_file(path, new)
            self.say(f"updated {path}")
        self.changed.append(str(path))

    def edit(
        self,
        path: Path,
        old: bytes | None,
        values: Mapping[str, str],
        *,
        separator: str = confedit.LIBVIRT_SEPARATOR,
        notes: Mapping[str, str] | None = None,
    ) -> None:
        text = (old or b"").decode("utf-8", "surrogateescape")
        new = confedit.set_values(text, values, separator=separator, header=HEADER, notes=notes)
        self.write(path, old, new.encode("utf-8", "surrogateescape"))

    def command(self, argv: Sequence[str], why: str) -> None:
        cmd = shlex.join(argv)
        if not self.live:
            self.manual.append(cmd)
            self.say(f"not run (--root is not /): {cmd}    # {why}")
            return
        if self.dry_run:
            self.ran.append(cmd)
            self.say(f"would run: {cmd}    # {why}")
            return
        self.say(f"running: {cmd}")
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SetupError(f"{cmd} failed: {exc}") from None
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip()
            raise SetupError(f"{cmd} failed (exit {proc.returncode}): {detail}")
        self.ran.append(cmd)

    def query(self, *argv: str) -> subprocess.CompletedProcess[str] | None:
        """A read-only command on the live system (dry runs too); None when not possible."""
        if not self.live or shutil.which(argv[0]) is None:
            return None
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None

    def query_out(self, *argv: str) -> str:
        proc = self.query(*argv)
        return proc.stdout.strip() if proc is not None else ""

    # --- the steps --------------------------------------------------------------------

    def secure_libvirtd(self, config: Path, cert_dir: Path | None, firewall: str) -> None:
        # 1. Refuse, changing nothing, unless everything needed is there.
        try:
            props = read_properties(config)
        except ConfigError as exc:
            raise SetupError(f"refusing: {exc}") from None
        if cert_dir is None:
            configured = props.get("cert.dir", "").strip()
            cert_dir = Path(configured) if configured else config.parent
        cert_dir = Path(os.path.abspath(cert_dir))
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
        old = config.read_bytes()
        # set_property's edit, made on a private copy, then one atomic replace keeping the mode.
        with tempfile.TemporaryDirectory(prefix="kvm-agent-setup.") as tmp:
            copy = Path(tmp) / config.name
            copy.write_bytes(old)
            set_property(copy, PROPERTY, "true")
            new = copy.read_bytes()
        self.write(config, old, new)

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
