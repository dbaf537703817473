"""The agent process: signals, systemd notifications, and the supervisor loop.

Structure (one trio nursery as supervisor):
  TaskQueue (commands, lives across sessions)
  ├── signal task: SIGTERM/SIGINT -> graceful stop, SIGHUP -> reload agent.properties
  ├── watchdog task: WATCHDOG=1 while the event loop runs
  └── supervise(): connect -> AgentSession.run() -> next host ... until stopped
"""

from __future__ import annotations

import datetime as dt
import itertools
import signal
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import libvirt
import structlog
import trio
from cryptography import x509

from agent import logs, pki
from agent.certificates import reload_libvirtd
from agent.commands import HandlerRegistry
from agent.config import AgentConfig, ConfigError, LbAlgorithm
from agent.hypervisor import Hypervisor
from agent.migration import Migrations
from agent.sdnotify import Notifier
from agent.session import AgentSession, OutcomeKind
from agent.state import StateStore
from agent.supervisor import HostCycler, probe_preferred, sleep_unless
from agent.tasks import TaskQueue
from agent.tls import CERT_FILE, TLSConfigError, client_context
from agent.transport import ConnectionLost, MessageStream
from protocol import Session

EXIT_OK = 0
EXIT_STOPPED_BY_MS = 10  # the MS sent ShutdownCommand: systemd must not restart us

log = structlog.get_logger("agent.daemon")


def expiry_warning(cert_dir: Path, warn_days: int) -> tuple[str, str] | None:
    """("warning"|"error", text) when cloud.crt expires within ``warn_days`` or has expired."""
    try:
        cert = x509.load_pem_x509_certificate((cert_dir / CERT_FILE).read_bytes())
    except (OSError, ValueError):
        return None  # no certificate yet: nothing to warn about
    left = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    if left.total_seconds() <= 0:
        return "error", (
            f"host certificate {cert_dir / CERT_FILE} EXPIRED on "
            f"{cert.not_valid_after_utc:%Y-%m-%d}: the host registers as unsecured and "
            "libvirtd may refuse to start; provision a new certificate"
        )
    if left.days < warn_days:
        return "warning", (
            f"host certificate {cert_dir / CERT_FILE} expires in {left.days} days "
            f"({cert.not_valid_after_utc:%Y-%m-%d}); provision a new one"
        )
    return None


_STATE_CHANGES = {
    libvirt.VIR_DOMAIN_EVENT_STARTED: "started",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed",
}


def split_host_port(entry: str, default_port: int) -> tuple[str, int]:
    """``host`` or ``host:port`` (IPv6 in brackets: ``[::1]:8250``)."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else default_port
    host, sep, port = entry.rpartition(":")
    if sep and port.isdigit() and ":" not in host:
        return host, int(port)
    return entry, default_port


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        *,
        notifier: Notifier | None = None,
        handlers: HandlerRegistry | None = None,
        hypervisor: Hypervisor | None = None,
        handle_signals: bool = True,
        connector: Callable[[str], Awaitable[MessageStream]] | None = None,
    ) -> None:
        self.config = config
        self.notifier = notifier or Notifier()
        self.handlers = handlers or HandlerRegistry.with_builtins()
        self.hypervisor = hypervisor or Hypervisor(
            config.hypervisor_uri, private_device=config.private_network_device
        )
        self.state = StateStore(config.state_dir)
        self.migrations = Migrations(config, self.hypervisor)
        self.handle_signals = handle_signals
        self.tasks: TaskQueue = None  # type: ignore[assignment]  # set by run()
        self.session: AgentSession | None = None
        self.current_host: str | None = None
        self.exit_code = EXIT_OK
        self._stopping = False
        self._stop_event = trio.Event()
        self._backoff_override: float | None = None
        self._announced_ready = False
        self.cycler = HostCycler(config.ms_hosts, config.lb_algorithm, config.backoff_seconds)
        self._lb_check_interval = config.lb_check_interval
        self._pending: tuple[str, MessageStream] | None = None
        self.security: pki.SecurityReport | None = None
        self._connector = connector or self._connect
        self._nursery: trio.Nursery | None = None
        self._tls_reload_wanted = trio.Event()
        # One request counter for the life of the process, as the Java agent keeps one.
        self.sequences = itertools.count()

    # --- AgentServices --------------------------------------------------------------

    async def secured(self) -> bool:
        """Evaluated at every registration: certificates, libvirtd TLS, QEMU TLS files."""
        cfg = self.config
        report = await trio.to_thread.run_sync(
            lambda: pki.evaluate(
                cfg.cert_dir, tls_enabled_setting=cfg.libvirtd_tls_enabled, root=cfg.pki_root
            )
        )
        if report.secured:
            log.info(
                "host is secured",
                not_after=str(report.certificate.not_after) if report.certificate else None,
            )
        elif any("expired" in r for r in report.reasons):
            log.error("host certificate EXPIRED: registering as unsecured", reasons=report.reasons)
        else:
            log.info("host is not secured", reasons=list(report.reasons))
        self.security = report
        return report.secured

    def set_backoff(self, seconds: float) -> None:
        self._backoff_override = max(0.0, seconds)
        self.cycler.backoff = self._backoff_override

    async def set_ms_hosts(
        self,
        hosts: Sequence[str],
        algorithm: LbAlgorithm | None,
        lb_check_interval: float | None,
    ) -> None:
        hosts = tuple(h for h in hosts if h)
        if not hosts:
            return
        if hosts != self.cycler.hosts or (algorithm and algorithm != self.cycler.algorithm):
            log.info(
                "management server list updated",
                hosts=list(hosts),
                algorithm=(algorithm or self.cycler.algorithm).value,
            )
            self.cycler.set_hosts(hosts, algorithm)
        if lb_check_interval is not None:
            self._lb_check_interval = lb_check_interval
        await self.state.update(
            ms_hosts=hosts,
            lb_algorithm=(algorithm or self.cycler.algorithm).value,
            lb_check_interval=self._lb_check_interval,
        )

    def schedule_tls_reload(self) -> None:
        """A new certificate was installed: reload libvirtd's TLS once nothing runs."""
        self._tls_reload_wanted.set()

    async def _tls_reloader(self) -> None:
        while True:
            await self._tls_reload_wanted.wait()
            self._tls_reload_wanted = trio.Event()  # imports from now on ask again
            log.info(
                "new certificate: libvirtd reload waits until no command is running",
                in_flight=self.tasks.in_flight,
            )
            await self.tasks.wait_idle()
            log.info("no command running: reloading libvirtd's TLS files")
            try:
                how = await trio.to_thread.run_sync(reload_libvirtd, self.config.libvirtd_reload)
                log.info("libvirtd uses the new certificate", how=how)
            except RuntimeError as exc:
                log.error("libvirtd reload failed; it keeps its old certificate", error=str(exc))
            if self.session is not None:
                log.info("registering again with the new certificate")
                self.session.finish(OutcomeKind.RECONNECT, "new certificate installed")

    async def _expiry_watch(self, interval: float = 24 * 3600) -> None:
        """Once a day: warn while the certificate nears its end, loudly once it is past."""
        while True:
            warning = await trio.to_thread.run_sync(
                lambda: expiry_warning(self.config.cert_dir, self.config.cert_expiry_warn_days)
            )
            if warning is not None:
                level, text = warning
                (log.error if level == "error" else log.warning)(text)
            await trio.sleep(interval)

    def stop_by_ms(self, reason: str) -> None:
        log.warning("management server told the agent to shut down", reason=reason)
        self.exit_code = EXIT_STOPPED_BY_MS
        self._begin_stop()

    # --- running --------------------------------------------------------------------

    async def run(self) -> int:
        """Run until stopped; returns the process exit code."""
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        saved = self.state.load()
        if saved.ms_hosts:
            algorithm = LbAlgorithm(saved.lb_algorithm) if saved.lb_algorithm else None
            self.cycler.set_hosts(saved.ms_hosts, algorithm)
            if saved.lb_check_interval is not None:
                self._lb_check_interval = saved.lb_check_interval
        log.info(
            "agent starting",
            guid=self.config.guid,
            hosts=list(self.cycler.hosts),
            hypervisor=self.config.hypervisor_uri,
        )
        async with TaskQueue.open(self.config.workers) as tasks:
            self.tasks = tasks
            async with trio.open_nursery() as nursery:
                if self.handle_signals:
                    nursery.start_soon(self._signals)
                if (interval := self.notifier.watchdog_interval()) is not None:
                    nursery.start_soon(self._watchdog, interval)
                self._nursery = nursery
                nursery.start_soon(self._tls_reloader)
                nursery.start_soon(self._expiry_watch)
                self.hypervisor.lifecycle_listeners.append(self._on_domain_event)
                await nursery.start(self.hypervisor.run)
                await self._supervise()
                nursery.cancel_scope.cancel()
        self.notifier.stopping()
        log.info("agent stopped", exit_code=self.exit_code)
        return self.exit_code

    def request_stop(self) -> None:
        """SIGTERM: no new commands, ShutdownCommand to the MS, finish in-flight work, exit."""
        if self._stopping:
            return
        self.exit_code = EXIT_OK
        self._begin_stop(tell_ms=True)

    def _begin_stop(self, *, tell_ms: bool = False) -> None:
        self._stopping = True
        self.notifier.stopping()
        if self.tasks is not None:
            self.tasks.close()
        session = self.session
        if session is not None:
            session.start_soon(self._graceful_end, session, tell_ms)
        self._stop_event.set()

    def _on_domain_event(self, name: str, event: int, detail: int) -> None:
        # A VM started or stopped (a migration included): tell the MS now, not at the next ping.
        if event in _STATE_CHANGES and self.session is not None:
            log.info("domain state changed", vm=name, change=_STATE_CHANGES[event])
            self.session.ping_soon()

    async def _graceful_end(self, session: AgentSession, tell_ms: bool) -> None:
        if tell_ms:
            await session.send_shutdown("sig.kill", f"agent {self.config.guid} stopping on request")
        with trio.move_on_after(self.config.shutdown_grace) as scope:
            await self.tasks.wait_idle()
        if scope.cancelled_caught:
            log.warning("grace period over, commands still running", in_flight=self.tasks.in_flight)
        session.finish(OutcomeKind.STOP, "agent stopping")

    async def _supervise(self) -> None:
        while not self._stopping:
            if self._pending is not None:
                host, stream = self._pending
                self._pending = None
            else:
                host, wait = self.cycler.next_attempt(trio.current_time())
                if wait > 0:
                    self.notifier.status(f"waiting {wait:.1f}s before connecting to {host}")
                    log.info("backing off", seconds=round(wait, 2), next_host=host)
                    await sleep_unless(self._stop_event, wait)
                    continue
                try:
                    stream = await self._connector(host)
                except ConnectionLost as exc:
                    log.warning("connect failed", host=host, error=str(exc))
                    self.cycler.attempt_failed(host, trio.current_time())
                    continue
            if self._stopping:
                await stream.aclose()
                break
            await self._run_session(host, stream)

    async def _run_session(self, host: str, stream: MessageStream) -> None:
        self.cycler.connected(host)
        session = AgentSession(stream, self, host)
        self.session, self.current_host = session, host
        self.notifier.status(f"registering with {host}")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._announce, session, host)
            if host != self.cycler.preferred and self._lb_check_interval > 0:
                nursery.start_soon(self._return_to_preferred, session)
            outcome = await session.run()
            nursery.cancel_scope.cancel()
        self.session, self.current_host = None, None
        now = trio.current_time()
        if outcome.kind in (OutcomeKind.LOST, OutcomeKind.REFUSED):
            self.cycler.session_lost(host, now)
            self.notifier.status(f"lost {host}: {outcome.reason}")
        elif outcome.kind is OutcomeKind.MOVE and self._pending is None:
            self.cycler.moved()
        elif outcome.kind is OutcomeKind.RECONNECT:
            self.cycler.reconnect(host)

    async def _announce(self, session: AgentSession, host: str) -> None:
        await session.registered.wait()
        if not self._announced_ready:
            self._announced_ready = True
            self.notifier.ready(f"registered with {host}")
        else:
            self.notifier.status(f"registered with {host}")

    async def _return_to_preferred(self, session: AgentSession) -> None:
        preferred = self.cycler.preferred
        while True:
            await trio.sleep(self._lb_check_interval)
            stream = await probe_preferred(
                self._connector, preferred, idle=lambda: self.tasks.in_flight == 0
            )
            if stream is not None:
                log.info("moving back to the preferred management server", host=preferred)
                self._pending = (preferred, stream)
                session.finish(OutcomeKind.MOVE, f"moving back to {preferred}")
                return

    async def _connect(self, host: str) -> MessageStream:
        cfg = self.config
        try:
            tls = await trio.to_thread.run_sync(
                lambda: client_context(
                    cfg.cert_dir,
                    bootstrap_insecure=cfg.bootstrap_insecure,
                    verify_hostname=cfg.verify_hostname,
                )
            )
        except TLSConfigError as exc:
            log.error("TLS configuration unusable", error=str(exc))
            raise ConnectionLost(str(exc)) from None
        if tls.insecure:
            log.warning(
                "ssl.bootstrap.insecure=true: the management server's certificate is NOT "
                "verified; provision cloud.ca.crt and turn this off",
                host=host,
            )
        name, port = split_host_port(host, cfg.port)
        self.notifier.status(f"connecting to {host}")
        return await MessageStream.connect(
            name,
            port,
            tls.context,
            Session.for_agent(agent_id=self.state.current.host_id or -1, sequences=self.sequences),
            connect_timeout=cfg.connect_timeout,
            handshake_timeout=cfg.handshake_timeout,
            server_hostname=name if cfg.verify_hostname else None,
        )

    # --- signals and watchdog -------------------------------------------------------

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    await self.reload()
                else:
                    log.info("stop requested", signal=signal.Signals(signum).name)
                    self.request_stop()

    async def reload(self) -> None:
        """SIGHUP: re-read agent.properties (host list, log level); keep a healthy session."""
        try:
            new = await trio.to_thread.run_sync(self.config.reload)
        except ConfigError as exc:
            log.error("reload failed, keeping the running configuration", error=str(exc))
            return
        logs.set_level(new.log_level)
        self.config = new
        await self.state.update(ms_hosts=None, lb_algorithm=None, lb_check_interval=None)
        self._lb_check_interval = new.lb_check_interval
        if new.ms_hosts != self.cycler.hosts or new.lb_algorithm != self.cycler.algorithm:
            self.cycler.set_hosts(new.ms_hosts, new.lb_algorithm)
        self.cycler.backoff = (
            self._backoff_override if self._backoff_override is not None else new.backoff_seconds
        )
        log.info("configuration reloaded", hosts=list(new.ms_hosts), log_level=new.log_level)
        if self.session is not None and self.current_host not in new.ms_hosts:
            self.session.finish(OutcomeKind.MOVE, "current MS is no longer in the host list")

    async def _watchdog(self, interval: float) -> None:
        while True:
            self.notifier.watchdog()
            await trio.sleep(interval)
