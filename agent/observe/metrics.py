"""Prometheus metrics, served on ``metrics.listen`` (off by default).

Imported only when metrics are on: an agent without them never loads ``prometheus_client``.
The events arrive through the observer hooks (agent.observe.observer); counters and
histograms are updated in the agent's thread (a lock each, no I/O), and ``/metrics`` is
served by a small threaded HTTP server of prometheus_client's WSGI application in threads
of its own, so a scrape, slow or not, never waits on the trio loop and never delays a ping.

Labels are bounded: ``command`` is the short Java class name of a command the agent has a
handler for, and ``other`` for every other class; ``result`` is true/false; ``outcome`` one
of MIGRATION_OUTCOMES. No label carries a host name, a VM name or any text from the MS.
"""

from __future__ import annotations

import datetime as dt
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import structlog
import trio
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    make_wsgi_app,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from agent.mshosts import split_host_port
from agent.observe.observer import MIGRATION_OUTCOMES, Observer

log = structlog.get_logger("agent.metrics")
OTHER = "other"
COMMAND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
MIGRATION_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600, 7200)
REQUEST_TIMEOUT = 10.0  # seconds a scraper may take to send its request
# No *_created series: a process start time per label set says nothing an operator needs
# (process_start_time_seconds does) and doubles what every scrape carries.
disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics(Observer):
    def __init__(self, in_flight: Callable[[], int] = lambda: 0) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.commands = Counter(
            "kvm_agent_commands",
            "Commands answered, by Java class (short name; 'other' for classes without a "
            "handler) and result",
            ["command", "result"],
            registry=r,
        )
        self.command_seconds = Histogram(
            "kvm_agent_command_duration_seconds",
            "Time from a command's start to its answer, by Java class",
            ["command"],
            buckets=COMMAND_BUCKETS,
            registry=r,
        )
        self.migrations = Counter(
            "kvm_agent_migrations",
            "Outgoing live migrations, by outcome",
            ["outcome"],
            registry=r,
        )
        self.migration_seconds = Histogram(
            "kvm_agent_migration_duration_seconds",
            "Wall time of outgoing live migrations, from the command to the outcome",
            buckets=MIGRATION_BUCKETS,
            registry=r,
        )
        self.failovers = Counter(
            "kvm_agent_failovers",
            "Registrations with another management server after a session was lost",
            registry=r,
        )
        for outcome in MIGRATION_OUTCOMES:
            self.migrations.labels(outcome)  # every outcome shows, at 0 until it happens
        self.state = _State(in_flight)
        r.register(self.state)
        ProcessCollector(registry=r)  # process_resident_memory_bytes and friends

    # --- hooks ----------------------------------------------------------------------

    def session_up(self, host: str) -> None:
        self.state.session_up = 1

    def session_down(self, host: str, outcome: str, reason: str) -> None:
        self.state.session_up = 0

    def failover(self, lost: str, now: str) -> None:
        self.failovers.inc()

    def command_done(self, java_class: str, handled: bool, result: bool, seconds: float) -> None:
        label = java_class.rsplit(".", 1)[-1] if handled else OTHER
        self.commands.labels(label, "true" if result else "false").inc()
        self.command_seconds.labels(label).observe(seconds)

    def migration_done(
        self, vm: str, dest: str, outcome: str, seconds: float, details: str | None
    ) -> None:
        self.migrations.labels(outcome if outcome in MIGRATION_OUTCOMES else "unknown").inc()
        self.migration_seconds.observe(seconds)

    def libvirt(self, connected: bool, error: str | None) -> None:
        self.state.libvirt_connected = int(connected)

    def secured(self, secured: bool, reasons: Sequence[str]) -> None:
        self.state.secured = int(secured)

    def certificate(self, not_after: dt.datetime | None) -> None:
        self.state.expiry = not_after.timestamp() if not_after is not None else None


class _State(Collector):
    """Gauges read at scrape time; one that is not known yet is left out rather than
    shown as 0 (an expiry of 0 would read as long expired)."""

    def __init__(self, in_flight: Callable[[], int]) -> None:
        self.session_up = 0
        self.libvirt_connected = 0
        self.secured: int | None = None
        self.expiry: float | None = None
        self.in_flight = in_flight

    def collect(self) -> Iterable[Any]:
        gauges: list[tuple[str, str, float | None]] = [
            (
                "kvm_agent_session_up",
                "1 while registered with a management server",
                self.session_up,
            ),
            (
                "kvm_agent_libvirt_connected",
                "1 while libvirtd is connected",
                self.libvirt_connected,
            ),
            ("kvm_agent_secured", "The last 'secured' evaluation (1 = secured)", self.secured),
            (
                "kvm_agent_certificate_expiry_timestamp_seconds",
                "cloud.crt's notAfter, in seconds since the epoch",
                self.expiry,
            ),
            ("kvm_agent_commands_in_flight", "Commands running or waiting", self.in_flight()),
        ]
        for name, doc, value in gauges:
            if value is not None:
                yield GaugeMetricFamily(name, doc, value=value)


# --- the HTTP server ----------------------------------------------------------------------


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in progress never holds the agent's exit


class _Quiet(WSGIRequestHandler):
    timeout = REQUEST_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per scrape would drown the agent's log


def _only_metrics(app: Any) -> Any:
    def serve(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        if environ.get("PATH_INFO") == "/metrics":
            return app(environ, start_response)  # type: ignore[no-any-return]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return iter([b"kvm-agent serves its metrics at /metrics\n"])

    return serve


def start_server(metrics: Metrics, listen: str) -> _Server:
    """Bind ``listen`` (host:port) and serve /metrics in a thread of its own (OSError)."""
    host, port = split_host_port(listen, 0)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class Server(_Server):
        address_family = family

    server = make_server(host, port, _only_metrics(make_wsgi_app(metrics.registry)), Server, _Quiet)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server


async def serve(
    metrics: Metrics,
    listen: str,
    *,
    task_status: trio.TaskStatus[str | None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled. Starts with the bound address (host:port), or None when it
    could not bind: the agent goes on without metrics, and says so (log, status)."""
    try:
        server = await trio.to_thread.run_sync(start_server, metrics, listen)
    except OSError as exc:
        log.error(
            "metrics.listen: cannot serve metrics; the agent runs without them",
            listen=listen,
            error=exc.strerror or str(exc),
        )
        task_status.started(None)
        return
    host, port = server.socket.getsockname()[:2]
    bound = f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    log.info("serving metrics", url=f"http://{bound}/metrics")
    task_status.started(bound)
    try:
        await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True):
            # shutdown() waits for serve_forever's poll (0.5 s) to notice: in a thread.
            await trio.to_thread.run_sync(server.shutdown)
            server.server_close()
