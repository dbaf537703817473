"""The agent process: the composition root.

``Agent`` builds the services once and owns the outer nursery. Resources outlive the work
that uses them:

  resources: signals (SIGTERM/SIGINT -> stop, SIGHUP -> reload), the systemd watchdog,
             the status socket and the metrics server (agent.observe), the hypervisor
             connection (and the statistics' own), the migration jobs
  └── TaskQueue (commands; lives across sessions)
      └── work: libvirtd's TLS reload after an import, the certificate expiry watch,
          the supervisor: connect -> AgentSession.run() -> next host ... until stopped

The ordered stop is agent.daemon.shutdown's; the connect loop agent.daemon.supervisor's; the
MS list agent.daemon.mslist's. What a handler may use of all this is its room's narrow view
(agent.handlers.context), never the Agent itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog
import trio

from agent import logs
from agent.config import AgentConfig, ConfigError
from agent.daemon.certwatch import TlsReloader, expiry_watch
from agent.daemon.mslist import HostCycler, MsList
from agent.daemon.sdnotify import Notifier
from agent.daemon.shutdown import CLEANUP_SECONDS, Shutdown, end_session, let_work_finish
from agent.daemon.signals import receive_signals, watchdog
from agent.daemon.supervisor import Supervisor
from agent.ha.heartbeat import Heartbeat
from agent.handlers import HandlerRegistry
from agent.hostparams import HostParams
from agent.hypervisor import hostinfo
from agent.hypervisor.connection import Hypervisor
from agent.hypervisor.events import DomainEvent
from agent.hypervisor.migration.engine import Migrations
from agent.hypervisor.pools import Pools
from agent.hypervisor.stats import Statistics, connection_for
from agent.hypervisor.volumes import Volumes
from agent.link.session import AgentSession, OutcomeKind
from agent.link.state import StateStore
from agent.link.tasks import TaskQueue
from agent.link.transport import MessageStream
from agent.observe import status
from agent.observe.observer import install, uninstall
from agent.observe.recorder import Facts, Recorder

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
        self.stats = Statistics(connection_for(self.hypervisor))
        self.pools = Pools(self.hypervisor)
        # Follows the pools the MS attaches; written as the IP the startup reports.
        self.heartbeat = Heartbeat(self.pools, lambda: self.config, self._private_ip)
        self.pools.watchers.append(self.heartbeat)
        self.volumes = Volumes(self.pools)
        self.ms_list = MsList(config, self.state)
        self.lifecycle = Shutdown(
            lambda: self.config.shutdown_grace,
            self.notifier,
            self._on_stop,
            backstop=handle_signals,
        )
        self.tls_reload = TlsReloader(
            lambda: self.config,
            lambda: self.tasks.wait_idle(),
            lambda: self.tasks.in_flight,
            self._register_again,
        )
        # The MS's SetHostParamsCommand values, laid over every configuration installed.
        self.host_params = HostParams(lambda: self.config, self._install_config)
        self.supervisor = Supervisor(self, self.ms_list, self.notifier, connector=connector)
        self.handle_signals = handle_signals
        self.tasks: TaskQueue = None  # type: ignore[assignment]  # set by run()
        self.finished = trio.Event()  # run() has returned
        # What the agent tells (agent.observe): facts for `kvm-agent status`, and metrics
        # when metrics.listen is set (prometheus_client is imported only then).
        self.recorder = Recorder()
        self.metrics_served: dict[str, str | None] | None = None
        if config.metrics_listen:
            from agent.observe.metrics import Metrics

            self.recorder.metrics = Metrics(lambda: self.tasks.in_flight if self.tasks else 0)

    # --- what tests and tools look at -----------------------------------------------

    @property
    def session(self) -> AgentSession | None:
        return self.supervisor.session

    @property
    def current_host(self) -> str | None:
        return self.supervisor.current_host

    @property
    def cycler(self) -> HostCycler:
        return self.ms_list.cycler

    @property
    def exit_code(self) -> int:
        return self.lifecycle.exit_code

    @property
    def facts(self) -> Facts:
        return self.recorder.facts

    def live(self) -> dict[str, Any]:
        """For `kvm-agent status` (agent.observe.status.StatusSource)."""
        return {
            "host_id": self.state.current.host_id,
            "commands_in_flight": self.tasks.in_flight if self.tasks is not None else 0,
            "migrations_running": self.migrations.running,
            "metrics": self.metrics_served,
        }

    # --- running --------------------------------------------------------------------

    async def run(self) -> int:
        """Run until stopped; returns the process exit code. ConfigError (exit 78) when
        state.dir cannot be used or another agent holds it."""
        self.state.acquire()
        observing = install(self.recorder)  # for every task this agent starts
        try:
            return await self._run()
        finally:
            uninstall(observing)
            self.lifecycle.cancel_backstop()
            self.state.release()
            self.finished.set()

    async def _run(self) -> int:
        self.ms_list.adopt_saved(self.state.load())
        log.info(
            "agent starting",
            guid=self.config.guid,
            hosts=list(self.cycler.hosts),
            hypervisor=self.config.hypervisor_uri,
        )
        async with trio.open_nursery() as resources:
            if self.handle_signals:
                resources.start_soon(receive_signals, self.request_stop, self.reload)
            if (interval := self.notifier.watchdog_interval()) is not None:
                resources.start_soon(watchdog, self.notifier, interval)
            await resources.start(status.serve, self)
            await self._serve_metrics(resources)
            self.hypervisor.lifecycle_listeners.append(self._on_domain_event)
            await resources.start(self.hypervisor.run)
            await resources.start(self.stats.hypervisor.run)
            await resources.start(self.migrations.run)
            await resources.start(self.heartbeat.run)
            cfg = self.config
            async with TaskQueue.open(cfg.workers, cfg.command_buffer_bytes) as tasks:
                self.tasks = tasks
                async with trio.open_nursery() as work:
                    work.start_soon(self.tls_reload.run)
                    work.start_soon(expiry_watch, lambda: self.config)
                    await self.supervisor.run()
                    work.cancel_scope.cancel()
                await let_work_finish(self.lifecycle.deadline(), tasks, self.migrations)
            # The remaining commands are cancelled; migrations still have until the end of
            # the clean-up to read their outcome; then the hypervisor connection closes.
            with trio.move_on_at(self.lifecycle.deadline() + CLEANUP_SECONDS):
                await self.migrations.wait_idle()
            resources.cancel_scope.cancel()
        self.notifier.stopping()
        log.info("agent stopped", exit_code=self.exit_code)
        return self.exit_code

    async def _serve_metrics(self, nursery: trio.Nursery) -> None:
        listen = self.config.metrics_listen
        if not listen:
            return
        from agent.observe.metrics import Metrics, serve

        assert isinstance(self.recorder.metrics, Metrics)
        bound = await nursery.start(serve, self.recorder.metrics, listen)
        self.metrics_served = {
            "listen": listen,
            "url": f"http://{bound}/metrics" if bound else None,
            "error": None if bound else f"cannot serve metrics on {listen} (see the log)",
        }

    def request_stop(self) -> None:
        """SIGTERM: no new commands, ShutdownCommand to the MS, finish in-flight work, exit."""
        self.lifecycle.request()

    def _on_stop(self, tell_ms: bool) -> None:
        if self.tasks is not None:
            self.tasks.close()
        self.supervisor.stop()
        session = self.session
        if session is not None and not session.start_soon(
            end_session,
            session,
            tell_ms,
            self.config.guid,
            self.lifecycle.deadline(),
            self.tasks,
            self.migrations,
        ):
            session.finish(OutcomeKind.STOP, "agent stopping")  # it was ending already

    def _register_again(self) -> None:
        if self.session is not None:
            log.info("registering again with the new certificate")
            self.session.finish(OutcomeKind.RECONNECT, "new certificate installed")

    def _install_config(self, new: AgentConfig) -> None:
        """A configuration with the MS's host parameters: one swap, as a reload does."""
        self.config = new
        self.migrations.apply(new)

    def _private_ip(self) -> str | None:
        """The private IP (private.network.device's), as StartupRoutingCommand reports it."""
        found = hostinfo.private_interface(self.config.private_network_device)
        return found.ip if found is not None else None

    def _on_domain_event(self, event: DomainEvent) -> None:
        # A VM started or stopped (a migration included): tell the MS now, not at the next ping.
        if event.kind.changes_power_state and self.session is not None:
            log.info("domain state changed", vm=event.name, change=event.kind.value)
            self.session.ping_soon()

    async def reload(self) -> None:
        """SIGHUP: re-read agent.properties and apply what can change while running (the
        keys listed in etc/agent.properties); keep a healthy session."""
        try:
            read = await trio.to_thread.run_sync(self.config.reload)
        except ConfigError as exc:
            log.error("reload failed, keeping the running configuration", error=str(exc))
            return
        new, restart = self.config.apply_reload(read)
        for key in restart:
            log.warning("configuration key changed; it needs a restart to take effect", key=key)
        # The MS's values (SetHostParamsCommand) win until restart; laid over in the same swap.
        for key, values in self.host_params.shadowed(new).items():
            log.info("configuration key overridden by the management server", key=key, **values)
        new = self.host_params.effective(new)
        # One swap: from here on every reader gets the new configuration whole.
        self.config = new
        logs.set_level(new.log_level)
        if self.tasks is not None:
            self.tasks.set_workers(new.workers)
            self.tasks.budget.set_limit(new.command_buffer_bytes)
        self.migrations.apply(new)
        await self.ms_list.apply(new)
        log.info(
            "configuration reloaded",
            hosts=list(new.ms_hosts),
            log_level=new.log_level,
            needs_restart=restart,
        )
        if self.session is not None and self.current_host not in new.ms_hosts:
            self.session.finish(OutcomeKind.MOVE, "current MS is no longer in the host list")
