"""``kvm-agent``: the daemon and the tools the management server runs over SSH.

Exit codes: 0 done; 1 refused (invalid certificate, nothing changed), or installed but the
PKI paths could not be linked (the message says which); 2 usage;
10 stopped by the management server; 78 configuration error.
``status``: 0 registered; 1 running but not registered; 3 not running; 4 cannot tell
(agent.observe.report).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent import __version__
from agent.config import DEFAULT_CONFIG, AgentConfig, ConfigError, cert_dir_of, read_properties

EXIT_REFUSED = 1
EXIT_CONFIG = 78


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvm-agent", description="KVM host agent for CloudStack")
    parser.add_argument("--version", action="version", version=f"kvm-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the agent daemon")
    run.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="agent.properties")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="override a property")

    ks = sub.add_parser("keystore-setup", help="new private key and CSR (printed to stdout)")
    ks.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    ks.add_argument("--cert-dir", type=Path, help="default: cert.dir of agent.properties")

    imp = sub.add_parser("keystore-cert-import", help="validate and install a certificate")
    imp.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    imp.add_argument("--cert-dir", type=Path, help="default: cert.dir of agent.properties")
    imp.add_argument("--cert", type=Path, required=True, help="PEM certificate (- for stdin)")
    imp.add_argument("--ca", type=Path, required=True, help="PEM CA chain")
    imp.add_argument("--key", type=Path, help="PEM private key (default: the pending key)")
    imp.add_argument("--no-link", action="store_true", help="do not link libvirt's PKI paths")
    imp.add_argument("--root", type=Path, help="system root for the PKI paths (default: /)")

    st = sub.add_parser("status", help="the running agent's state (exit 0: registered)")
    st.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="agent.properties")
    st.add_argument("--json", action="store_true", help="print the status as JSON")

    try:
        _setup_tool().add_parser(sub)
    except ModuleNotFoundError:  # a partial install without the setup tool
        pass
    return parser


def _setup_tool() -> Any:
    return importlib.import_module("agent.setup.libvirtd")


def _cert_dir(args: argparse.Namespace) -> Path:
    if args.cert_dir is not None:
        return Path(args.cert_dir)
    props = read_properties(args.config) if args.config.exists() else {}
    return cert_dir_of(props, Path(args.config))


def _read(path: Path) -> bytes:
    return sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()


def keystore_setup(args: argparse.Namespace) -> int:
    from agent.certs.store import CertStore
    from agent.hypervisor.hostinfo import host_identity

    fqdn, names, ips = host_identity()
    csr = CertStore(_cert_dir(args)).new_csr(fqdn, names, ips)
    sys.stdout.write(csr.decode())
    return 0


def keystore_cert_import(args: argparse.Namespace) -> int:
    from agent.certs.certinfo import CertificateError
    from agent.certs.store import CertStore

    store = CertStore(_cert_dir(args))
    try:
        key = _read(args.key) if args.key else None
        info = store.install(_read(args.cert), _read(args.ca), key)
    except (CertificateError, OSError) as exc:
        print(f"kvm-agent: certificate rejected, nothing changed: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    print(f"installed {info.subject}, valid until {info.not_after:%Y-%m-%d}")
    if not args.no_link:
        root = args.root or Path("/")
        try:
            store.link_pki(root)  # libvirt's and QEMU's paths, QEMU's DH parameters
        except (CertificateError, OSError) as exc:
            print(f"kvm-agent: linking the PKI paths under {root} failed: {exc}", file=sys.stderr)
            return EXIT_REFUSED
    return 0


def status(args: argparse.Namespace) -> int:
    from agent.observe import report

    config = AgentConfig.load(args.config)  # state.dir says where the agent's socket is
    return report.run(config.state_dir, as_json=args.json, out=sys.stdout, err=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "keystore-setup":
            return keystore_setup(args)
        if args.command == "keystore-cert-import":
            return keystore_cert_import(args)
        if args.command == "setup":
            return int(_setup_tool().run(args))
        if args.command == "status":
            return status(args)
        config = AgentConfig.load(args.config, args.overrides)
    except ConfigError as exc:
        print(f"kvm-agent: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    import trio

    from agent import logs
    from agent.daemon.app import Agent

    logs.configure(config.log_level)
    try:
        return trio.run(Agent(config).run)
    except ConfigError as exc:  # state.dir unusable, or another agent holds it
        print(f"kvm-agent: {exc}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
