"""The agent process: signals, systemd notifications, and the supervisor loop.

Structure: resources outlive the work that uses them.
  resources: signal task (SIGTERM/SIGINT -> graceful stop, SIGHUP -> reload),
             watchdog (WATCHDOG=1 while the event loop runs), the hypervisor connection,
             the migration jobs
  └── TaskQueue (commands, lives across sessions)
      └── supervise(): connect -> AgentSession.run() -> next host ... until stopped

Stopping: no new commands; ShutdownCommand to the MS; commands and migrations get
shutdown.grace.seconds to finish; then running migrations are aborted and their outcome
read on both hosts (a few seconds more), the remaining commands cancelled, and only then
the hypervisor connection closed. The process ends within shutdown.grace.seconds + 5 s.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence

import structlog
import trio

from agent import logs
from agent.certs import system_pki as pki
from agent.certs.expiry import expiry_warning
from agent.certs.libvirtd import reload_libvirtd
from agent.certs.trust import TLSConfigError, client_context
from agent.commands import HandlerRegistry
from agent.config import AgentConfig, ConfigError, LbAlgorithm, split_host_port
from agent.hypervisor.connection import Hypervisor
from agent.hypervisor.events import DomainEvent
from agent.hypervisor.migration.engine import Migrations
from agent.sdnotify import Notifier
from agent.session import AgentSession, OutcomeKind
from agent.state import AgentState, StateStore
from agent.supervisor import HostCycler, probe_preferred, sleep_unless, valid_hosts
from agent.tasks import TaskQueue
from agent.transport import ConnectionLost, MessageStream
from protocol import Session

EXIT_OK = 0
EXIT_STOPPED_BY_MS = 10  # the MS sent ShutdownCommand: systemd must not restart us
SHUTDOWN_NOTICE_TIMEOUT = 2.0  # for the ShutdownCommand to leave
CLEANUP_SECONDS = 4.0  # after the grace period: abort migrations, read where their VMs are
EXIT_MARGIN = 5.0  # the process ends within shutdown.grace.seconds + this, in every state

log = structlog.get_logger("agent.daemon")


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
        # Replaced whole on SIGHUP, never changed in place: whoever reads it once (a
        # command, a migration, a connection attempt) sees one consistent configuration.
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
        self._stop_deadline: float | None = None  # end of the grace period
        self._connecting: trio.CancelScope | None = None
        self._backstop: threading.Timer | None = None
        self.finished = trio.Event()  # run() has returned
        self._backoff_override: float | None = None
        self._announced_ready = False
        self.cycler = HostCycler(config.ms_hosts, config.lb_algorithm, config.backoff_seconds)
        self._lb_check_interval = config.lb_check_interval
        self._pending: tuple[str, MessageStream] | None = None
        self.security: pki.SecurityReport | None = None
        self._connector = connector or self._connect
        self._tls_reload_wanted = trio.Event()
        # One request counter for the life of the process, as the Java agent keeps one.
        self.sequences = itertools.count()

    # --- AgentServices --------------------------------------------------------------

    async def secured(self, config: AgentConfig | None = None) -> bool:
        """Evaluated at every registration: certificates, libvirtd TLS, QEMU TLS files."""
        cfg = config or self.config
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
        """From the MS (already clamped to 1-300 s by the session)."""
        self._backoff_override = seconds
        self.cycler.backoff = seconds

    async def set_ms_hosts(
        self,
        hosts: Sequence[str],
        algorithm: LbAlgorithm | None,
        lb_check_interval: float | None,
    ) -> tuple[str, ...]:
        hosts = valid_hosts(hosts, "management server")
        if not hosts:
            log.warning("no valid address in the management server's list; keeping the current one")
            return hosts
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
        return hosts

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
        """Run until stopped; returns the process exit code. ConfigError (exit 78) when
        state.dir cannot be used or another agent holds it."""
        self.state.acquire()
        try:
            return await self._run()
        finally:
            if self._backstop is not None:
                self._backstop.cancel()
            self.state.release()
            self.finished.set()

    def _adopt_saved(self, saved: AgentState) -> None:
        if not saved.ms_hosts:
            return
        hosts = valid_hosts(saved.ms_hosts, f"state file {self.state.path}")
        if not hosts:
            log.warning("no valid address in the saved list; using agent.properties' host")
            return
        algorithm = LbAlgorithm(saved.lb_algorithm) if saved.lb_algorithm else None
        self.cycler.set_hosts(hosts, algorithm)
        if saved.lb_check_interval is not None:
            self._lb_check_interval = saved.lb_check_interval

    async def _run(self) -> int:
        self._adopt_saved(self.state.load())
        log.info(
            "agent starting",
            guid=self.config.guid,
            hosts=list(self.cycler.hosts),
            hypervisor=self.config.hypervisor_uri,
        )
        async with trio.open_nursery() as resources:
            if self.handle_signals:
                resources.start_soon(self._signals)
            if (interval := self.notifier.watchdog_interval()) is not None:
                resources.start_soon(self._watchdog, interval)
            self.hypervisor.lifecycle_listeners.append(self._on_domain_event)
            await resources.start(self.hypervisor.run)
            await resources.start(self.migrations.run)
            cfg = self.config
            async with TaskQueue.open(cfg.workers, cfg.command_buffer_bytes) as tasks:
                self.tasks = tasks
                async with trio.open_nursery() as work:
                    work.start_soon(self._tls_reloader)
                    work.start_soon(self._expiry_watch)
                    await self._supervise()
                    work.cancel_scope.cancel()
                await self._let_work_finish()
            # The remaining commands are cancelled; migrations still have until the end of
            # the clean-up to read their outcome; then the hypervisor connection closes.
            with trio.move_on_at(self._deadline() + CLEANUP_SECONDS):
                await self.migrations.wait_idle()
            resources.cancel_scope.cancel()
        self.notifier.stopping()
        log.info("agent stopped", exit_code=self.exit_code)
        return self.exit_code

    def _deadline(self) -> float:
        if self._stop_deadline is None:
            self._stop_deadline = trio.current_time() + self.config.shutdown_grace
        return self._stop_deadline

    async def _let_work_finish(self) -> None:
        with trio.move_on_at(self._deadline()) as scope:
            await self.tasks.wait_idle()
            await self.migrations.wait_idle()
        if scope.cancelled_caught:
            log.warning(
                "grace period over: cancelling the commands still running",
                commands=self.tasks.in_flight,
                migrations=self.migrations.running,
            )
            self.migrations.abort_all(
                "the agent is stopping and shutdown.grace.seconds is over",
                self._deadline() + CLEANUP_SECONDS,
            )

    def request_stop(self) -> None:
        """SIGTERM: no new commands, ShutdownCommand to the MS, finish in-flight work, exit."""
        if self._stopping:
            return
        self.exit_code = EXIT_OK
        self._begin_stop(tell_ms=True)

    def _begin_stop(self, *, tell_ms: bool = False) -> None:
        if self._stopping:
            return
        self._stopping = True
        grace = self._deadline() - trio.current_time()
        self.notifier.stopping()
        if self.tasks is not None:
            self.tasks.close()
        if self._connecting is not None:
            self._connecting.cancel()  # a stalled connect or handshake must not hold the stop
        session = self.session
        if session is not None and not session.start_soon(self._graceful_end, session, tell_ms):
            session.finish(OutcomeKind.STOP, "agent stopping")  # it was ending already
        self._stop_event.set()
        if self.handle_signals:
            # Last resort for a thread stuck inside libvirt, which no cancellation reaches.
            self._backstop = threading.Timer(grace + EXIT_MARGIN, self._force_exit)
            self._backstop.daemon = True
            self._backstop.start()

    def _force_exit(self) -> None:
        log.error(
            "the agent did not stop within shutdown.grace.seconds + 5 s; exiting now",
            exit_code=self.exit_code,
        )
        sys.stdout.flush()
        os._exit(self.exit_code)

    def _on_domain_event(self, event: DomainEvent) -> None:
        # A VM started or stopped (a migration included): tell the MS now, not at the next ping.
        if event.kind.changes_power_state and self.session is not None:
            log.info("domain state changed", vm=event.name, change=event.kind.value)
            self.session.ping_soon()

    async def _graceful_end(self, session: AgentSession, tell_ms: bool) -> None:
        if tell_ms:
            with trio.move_on_after(SHUTDOWN_NOTICE_TIMEOUT):
                await session.send_shutdown(
                    "sig.kill", f"agent {self.config.guid} stopping on request"
                )
        with trio.move_on_at(self._deadline()):
            await self.tasks.wait_idle()
            await self.migrations.wait_idle()
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
                connected: MessageStream | None = None
                with trio.CancelScope() as self._connecting:
                    try:
                        connected = await self._connector(host)
                    except ConnectionLost as exc:
                        log.warning("connect failed", host=host, error=str(exc))
                        self.cycler.attempt_failed(host, trio.current_time())
                self._connecting = None
                if connected is None:
                    continue  # failed, or cancelled because the agent stops
                stream = connected
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
        """SIGHUP: re-read agent.properties and apply what can change while running (the
        keys listed in etc/agent.properties); keep a healthy session."""
        try:
            read = await trio.to_thread.run_sync(self.config.reload)
        except ConfigError as exc:
            log.error("reload failed, keeping the running configuration", error=str(exc))
            return
        old = self.config
        new, restart = old.apply_reload(read)
        for key in restart:
            log.warning("configuration key changed; it needs a restart to take effect", key=key)
        # One swap: from here on every reader gets the new configuration whole.
        self.config = new
        logs.set_level(new.log_level)
        if self.tasks is not None:
            self.tasks.set_workers(new.workers)
            self.tasks.budget.set_limit(new.command_buffer_bytes)
        self.migrations.apply(new)
        await self.state.update(ms_hosts=None, lb_algorithm=None, lb_check_interval=None)
        self._lb_check_interval = new.lb_check_interval
        if new.ms_hosts != self.cycler.hosts or new.lb_algorithm != self.cycler.algorithm:
            self.cycler.set_hosts(new.ms_hosts, new.lb_algorithm)
        self.cycler.backoff = (
            self._backoff_override if self._backoff_override is not None else new.backoff_seconds
        )
        log.info(
            "configuration reloaded",
            hosts=list(new.ms_hosts),
            log_level=new.log_level,
            needs_restart=restart,
        )
        if self.session is not None and self.current_host not in new.ms_hosts:
            self.session.finish(OutcomeKind.MOVE, "current MS is no longer in the host list")

    async def _watchdog(self, interval: float) -> None:
        while True:
            self.notifier.watchdog()
            await trio.sleep(interval)
