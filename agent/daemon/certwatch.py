"""The daemon's part in certificates: libvirtd's TLS reload after an import, and the daily
expiry warning."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
import trio

from agent.certs.expiry import not_after, warning_for
from agent.certs.libvirtd import reload_libvirtd
from agent.config import AgentConfig
from agent.observe.observer import observer

log = structlog.get_logger("agent.certwatch")


class TlsReloader:
    """A new certificate was installed: once no command runs, libvirtd re-reads its TLS
    files and the agent registers again (now secured). ``wait_idle`` waits until no command
    runs; ``register_again`` ends the current session, if any, for a new one."""

    def __init__(
        self,
        config: Callable[[], AgentConfig],
        wait_idle: Callable[[], Awaitable[None]],
        in_flight: Callable[[], int],
        register_again: Callable[[], None],
    ) -> None:
        self._config = config
        self._wait_idle = wait_idle
        self._in_flight = in_flight
        self._register_again = register_again
        self._wanted = trio.Event()

    def schedule(self) -> None:
        self._wanted.set()

    async def run(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted = trio.Event()  # imports from now on ask again
            log.info(
                "new certificate: libvirtd reload waits until no command is running",
                in_flight=self._in_flight(),
            )
            await self._wait_idle()
            log.info("no command running: reloading libvirtd's TLS files")
            try:
                how = await trio.to_thread.run_sync(reload_libvirtd, self._config().libvirtd_reload)
                log.info("libvirtd uses the new certificate", how=how)
            except RuntimeError as exc:
                log.error("libvirtd reload failed; it keeps its old certificate", error=str(exc))
            self._register_again()


async def expiry_watch(config: Callable[[], AgentConfig], interval: float = 24 * 3600) -> None:
    """Once a day: warn while the certificate nears its end, loudly once it is past."""
    while True:
        cfg = config()
        ends = await trio.to_thread.run_sync(not_after, cfg.cert_dir)
        observer().certificate(ends)
        warning = warning_for(ends, cfg.cert_dir, cfg.cert_expiry_warn_days)
        if warning is not None:
            level, text = warning
            (log.error if level == "error" else log.warning)(text)
        await trio.sleep(interval)
