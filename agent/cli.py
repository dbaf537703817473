"""``kvm-agent``: run the daemon (and, later, the certificate and setup tools)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from agent import __version__, logs
from agent.config import DEFAULT_CONFIG, AgentConfig, ConfigError
from agent.daemon import EXIT_CONFIG, Agent


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvm-agent", description="KVM host agent for CloudStack")
    parser.add_argument("--version", action="version", version=f"kvm-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the agent daemon")
    run.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="agent.properties")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="override a property")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        try:
            config = AgentConfig.load(args.config, args.overrides)
        except ConfigError as exc:
            print(f"kvm-agent: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        logs.configure(config.log_level)
        return trio.run(Agent(config).run)
    return 2


if __name__ == "__main__":
    sys.exit(main())
