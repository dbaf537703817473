"""The agent as benchmarks run it: the real daemon plus one slow command for load.

``python -m bench.agent_proc --config agent.properties`` logs JSON to stdout at debug
level, so that ping round trips (``rtt_ms``) can be read from the log.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trio

from agent import logs
from agent.config import AgentConfig
from agent.daemon.app import Agent
from agent.handlers import HandlerRegistry
from agent.handlers.context import CommandContext
from protocol.model import Answer, Message, UnknownMessage

SLOW_COMMAND = "bench.SlowCommand"


async def slow(cmd: UnknownMessage, ctx: CommandContext) -> Message:
    seconds = cmd.fields.get("seconds", 1)
    await trio.sleep(float(seconds) if isinstance(seconds, int | float) else 1.0)
    return Answer(result=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args()
    config = AgentConfig.load(args.config)
    logs.configure("debug", json=True)
    handlers = HandlerRegistry.with_builtins()
    handlers.register(SLOW_COMMAND, slow)
    return trio.run(Agent(config, handlers=handlers).run)


if __name__ == "__main__":
    sys.exit(main())
