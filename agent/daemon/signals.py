"""Signals and the systemd watchdog: SIGTERM/SIGINT stop the agent, SIGHUP reloads it."""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable

import structlog
import trio

from agent.daemon.sdnotify import Notifier

log = structlog.get_logger("agent.signals")


async def receive_signals(stop: Callable[[], None], reload: Callable[[], Awaitable[None]]) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                await reload()
            else:
                log.info("stop requested", signal=signal.Signals(signum).name)
                stop()


async def watchdog(notifier: Notifier, interval: float) -> None:
    """WATCHDOG=1 while the event loop runs (a hung loop stops it, and systemd acts)."""
    while True:
        notifier.watchdog()
        await trio.sleep(interval)
