"""Prometheus metrics, and the HTTP endpoint a worker serves them on with its health probes.

Three parts:

- :class:`Metrics`: the process's instruments (counters and histograms of events and steps) in
  a registry of their own, never prometheus-client's global one;
- :class:`MetricsPlugin`: a plugin implementing the life-cycle hooks that feeds them, so
  nothing in the engine knows about metrics; and :class:`StoreCollector`, which reads the
  store's gauges (queue depth and age, leases, due timers, dead letters, workers) at scrape
  time, so they are right whichever worker is scraped;
- :class:`MetricsServer`: ``/metrics``, ``/healthz`` (the process is alive) and ``/readyz``
  (its store and broker answer) on one port, for Prometheus and Kubernetes probes.

``ledgerflow worker --metrics-port PORT`` (``LEDGERFLOW_METRICS_PORT``) puts them together.
Labels are bounded: action names, outcomes, statuses and rejection reasons, and the tenant
only when asked for (``--metrics-tenant-label``), as tenants may be many.
"""

from __future__ import annotations

import http.server
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ledgerflow import logs
from ledgerflow.hookspecs import StepInfo, hookimpl
from ledgerflow.model import JSON
from ledgerflow.status import read_gauges
from ledgerflow.store.sql import SQLStore

if TYPE_CHECKING:
    from ledgerflow.worker import Worker

__all__ = [
    "METRICS_PLUGIN",
    "Metrics",
    "MetricsPlugin",
    "MetricsServer",
    "StoreCollector",
    "metric_names",
    "readiness",
    "serve_worker",
]

log = logging.getLogger("ledgerflow.metrics")

METRICS_PLUGIN: Final = "ledgerflow.metrics"
"""The name the metrics plugin is registered under (``ledgerflow plugins`` shows it)."""

# seconds: from a few milliseconds (a step writing one row) to minutes (a slow HTTP call
# retried, an event waiting behind a backlog)
_LATENCY_BUCKETS: Final = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    float("inf"),
)


class Metrics:
    """The instruments of one process, registered in :attr:`registry`.

    With ``tenant_label`` the event and step counters carry a ``tenant`` label too; leave it
    off when tenants are many (each label value is a time series Prometheus keeps).
    """

    def __init__(self, *, tenant_label: bool = False) -> None:
        self.tenant_label = tenant_label
        self.registry = CollectorRegistry()
        tenant = ("tenant",) if tenant_label else ()
        reg = self.registry
        self.events_enqueued = Counter(
            "ledgerflow_events_enqueued",
            "Events this process appended to a ledger (clients, timers, emit_event steps).",
            tenant,
            registry=reg,
        )
        self.events_processed = Counter(
            "ledgerflow_events_processed",
            "Events decided by this process, by status (processed, rejected, failed) and "
            "outcome (applied, compensated, failed, retried, or the rejection's reason).",
            ("status", "outcome", *tenant),
            registry=reg,
        )
        self.events_rejected = Counter(
            "ledgerflow_events_rejected",
            "Events rejected by this process, by reason.",
            ("reason", *tenant),
            registry=reg,
        )
        self.events_failed = Counter(
            "ledgerflow_events_failed",
            "Events whose steps failed for good in this process (their execution failed).",
            tenant,
            registry=reg,
        )
        self.event_processing = Histogram(
            "ledgerflow_event_processing_seconds",
            "From taking an event up to committing its outcome, by status.",
            ("status",),
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        )
        self.event_latency = Histogram(
            "ledgerflow_event_latency_seconds",
            "From an event's append to the commit of its outcome, by status.",
            ("status",),
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        )
        self.steps = Counter(
            "ledgerflow_steps",
            "Steps run by this process, by action and outcome (succeeded, failed, compensated).",
            ("action", "outcome", *tenant),
            registry=reg,
        )
        self.step_duration = Histogram(
            "ledgerflow_step_duration_seconds",
            "How long a step took, its retries included, by action and outcome.",
            ("action", "outcome"),
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        )
        self.step_retries = Counter(
            "ledgerflow_step_retries",
            "Failed attempts of a step that were tried again, by action.",
            ("action",),
            registry=reg,
        )
        self.compensations = Counter(
            "ledgerflow_compensations",
            "Completed steps undone by compensation, by action.",
            ("action",),
            registry=reg,
        )
        self.executions_created = Counter(
            "ledgerflow_executions_created",
            "Executions this process created.",
            registry=reg,
        )
        self.executions_finished = Counter(
            "ledgerflow_executions_finished",
            "Executions this process brought to an end, by status (completed, failed).",
            ("status",),
            registry=reg,
        )
        self.worker_leases = Gauge(
            "ledgerflow_worker_leases_held",
            "Executions this worker holds the lease of and is working on now.",
            registry=reg,
        )

    def tenant(self, tenant: str) -> tuple[str, ...]:
        """The tenant label's value, when the tenant label is on; else nothing."""
        return (tenant,) if self.tenant_label else ()

    def per_tenant(self, counter: Counter, tenant: str) -> Counter:
        """``counter`` itself, or its child for ``tenant`` when the tenant label is on (a
        counter labelled by the tenant alone)."""
        return counter.labels(tenant) if self.tenant_label else counter

    def render(self) -> bytes:
        """The registry in Prometheus' text exposition format."""
        return generate_latest(self.registry)


class MetricsPlugin:
    """Feeds :class:`Metrics` from the life-cycle hooks; register it on an engine's plugins
    (the worker does, as :data:`METRICS_PLUGIN`). Every hook only counts: it never raises
    on its own account and never touches the store."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    @hookimpl
    def ledgerflow_execution_created(self) -> None:
        """Count an execution created."""
        self.metrics.executions_created.inc()

    @hookimpl
    def ledgerflow_event_enqueued(self, tenant: str) -> None:
        """Count an event appended."""
        self.metrics.per_tenant(self.metrics.events_enqueued, tenant).inc()

    @hookimpl
    def ledgerflow_event_processed(
        self, event_id: str, tenant: str, status: str, outcome: str
    ) -> None:
        """Count a decided event, and time it when it is the one this thread took up."""
        m = self.metrics
        m.events_processed.labels(status, outcome, *m.tenant(tenant)).inc()
        if status == "failed":
            m.per_tenant(m.events_failed, tenant).inc()
        started = logs.event_started()
        if started is not None and logs.current().get("event_id") == event_id:
            taken_up, appended = started
            m.event_processing.labels(status).observe(max(0.0, time.monotonic() - taken_up))
            m.event_latency.labels(status).observe(max(0.0, time.time() - appended))

    @hookimpl
    def ledgerflow_event_rejected(self, tenant: str, reason: str) -> None:
        """Count a rejection by its reason."""
        self.metrics.events_rejected.labels(reason, *self.metrics.tenant(tenant)).inc()

    @hookimpl
    def ledgerflow_step_succeeded(self, step: StepInfo, duration: float) -> None:
        """Count and time a step that succeeded."""
        self._step(step, "succeeded", duration)

    @hookimpl
    def ledgerflow_step_failed(self, step: StepInfo, duration: float) -> None:
        """Count and time a step that failed for good."""
        self._step(step, "failed", duration)

    @hookimpl
    def ledgerflow_step_retried(self, step: StepInfo) -> None:
        """Count an attempt tried again."""
        self.metrics.step_retries.labels(step.action).inc()

    @hookimpl
    def ledgerflow_step_compensated(self, step: StepInfo, result: JSON) -> None:
        """Count a step undone."""
        m = self.metrics
        m.compensations.labels(step.action).inc()
        m.steps.labels(step.action, "compensated", *m.tenant(step.tenant)).inc()

    @hookimpl
    def ledgerflow_execution_completed(self) -> None:
        """Count an execution completed."""
        self.metrics.executions_finished.labels("completed").inc()

    @hookimpl
    def ledgerflow_execution_failed(self) -> None:
        """Count an execution failed."""
        self.metrics.executions_finished.labels("failed").inc()

    def _step(self, step: StepInfo, outcome: str, duration: float) -> None:
        m = self.metrics
        if step.compensation:
            return  # ledgerflow_step_compensated counts it
        m.steps.labels(step.action, outcome, *m.tenant(step.tenant)).inc()
        m.step_duration.labels(step.action, outcome).observe(max(0.0, duration))


class StoreCollector(Collector):
    """Reads the store's gauges at scrape time (see :func:`ledgerflow.status.read_gauges`):
    every worker exports the same figures, so a dashboard takes their ``max``. ``transport``
    labels the queue gauges with the scheme of the transport this worker serves. When the
    store cannot be read, the scrape still answers, with ``ledgerflow_store_up`` 0 and no
    store gauges."""

    def __init__(self, store: SQLStore, *, transport: str, dead_after: float = 30.0) -> None:
        self.store = store
        self.transport = transport
        self.dead_after = dead_after

    def describe(self) -> Iterable[Metric]:
        """The families :meth:`collect` yields, without reading the store."""
        return self._families()

    def collect(self) -> Iterable[Metric]:
        """The store's gauges now."""
        try:
            gauges = read_gauges(self.store, dead_after=self.dead_after)
        except Exception as exc:  # a scrape must answer even when the store does not
            log.warning("metrics: the store's gauges could not be read: %s", exc)
            up = GaugeMetricFamily("ledgerflow_store_up", _STORE_UP)
            up.add_metric([], 0)
            return [up]
        families = self._families()
        by_name = {f.name: f for f in families}
        by_name["ledgerflow_store_up"].add_metric([], 1)
        by_name["ledgerflow_queue_depth"].add_metric([self.transport], gauges.queue_depth)
        by_name["ledgerflow_queue_oldest_age_seconds"].add_metric(
            [self.transport], gauges.oldest_age or 0.0
        )
        by_name["ledgerflow_leases"].add_metric([], gauges.leases)
        by_name["ledgerflow_timers_due"].add_metric([], gauges.timers_due)
        by_name["ledgerflow_dead_letters"].add_metric([], gauges.dead_letters)
        for state, count in sorted(gauges.workers.items()):
            by_name["ledgerflow_workers"].add_metric([state], count)
        return families

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily("ledgerflow_store_up", _STORE_UP),
            GaugeMetricFamily(
                "ledgerflow_queue_depth",
                "Events appended and not yet decided, across tenants.",
                labels=["transport"],
            ),
            GaugeMetricFamily(
                "ledgerflow_queue_oldest_age_seconds",
                "Age of the oldest event not yet decided (0 when none is): the queue's lag.",
                labels=["transport"],
            ),
            GaugeMetricFamily("ledgerflow_leases", "Execution leases held and not expired."),
            GaugeMetricFamily(
                "ledgerflow_timers_due", "Armed timers whose time has come and not yet fired."
            ),
            GaugeMetricFamily(
                "ledgerflow_dead_letters", "Dead letters neither retried nor discarded."
            ),
            GaugeMetricFamily(
                "ledgerflow_workers",
                "Workers by the state their heartbeats imply (alive, dead, stopped).",
                labels=["state"],
            ),
        ]


_STORE_UP = "Whether the store answered this scrape (1) or not (0)."


def metric_names(metrics: Metrics) -> frozenset[str]:
    """Every series name ``metrics`` can export, with the store's gauges: counters' ``_total``
    and ``_created``, histograms' ``_bucket``, ``_sum``, ``_count`` and ``_created`` included.
    What a dashboard or an alert may refer to."""
    names: set[str] = set()
    families = list(metrics.registry.collect()) + StoreCollector._families()
    for family in families:
        if family.type == "counter":
            names.update({f"{family.name}_total", f"{family.name}_created"})
        elif family.type == "histogram":
            suffixes = ("_bucket", "_sum", "_count", "_created")
            names.update(f"{family.name}{suffix}" for suffix in suffixes)
        else:
            names.add(family.name)
    return frozenset(names)


# --------------------------------------------------------------------------------------------
# The endpoint
# --------------------------------------------------------------------------------------------

Check = Callable[[], Mapping[str, str]]
"""A probe's checks: a name for each thing checked, and ``"ok"`` or what is wrong."""


class MetricsServer:
    """Serves ``/metrics`` (the registry), ``/healthz`` (``live``) and ``/readyz``
    (``ready``) on ``host``:``port`` from a daemon thread; ``port`` 0 takes a free one
    (:attr:`port` says which). A probe answers 200 with its checks as JSON when every one is
    ``"ok"``, else 503; an unknown path answers 404.
    """

    def __init__(
        self,
        metrics: Metrics,
        *,
        port: int,
        host: str = "0.0.0.0",
        live: Check = lambda: {"process": "ok"},
        ready: Check = lambda: {"process": "ok"},
    ) -> None:
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"the metrics port must be 0 to 65535, not {port!r}")
        routes: dict[str, Callable[[], tuple[int, str, bytes]]] = {
            "/metrics": lambda: (200, CONTENT_TYPE_LATEST, metrics.render()),
            "/healthz": lambda: _probe(live),
            "/readyz": lambda: _probe(ready),
        }

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                route = routes.get(self.path.split("?", 1)[0])
                if route is None:
                    code, kind, body = 404, "text/plain; charset=utf-8", b"not found\n"
                else:
                    try:
                        code, kind, body = route()
                    except Exception as exc:
                        log.exception("metrics endpoint %s failed", self.path)
                        code, kind = 500, "text/plain; charset=utf-8"
                        body = f"{type(exc).__name__}: {exc}\n".encode()
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("metrics endpoint: " + format, *args)

        self._server = http.server.ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="ledgerflow-metrics", daemon=True
        )
        self.on_stop: Callable[[], None] | None = None
        """Called once by :meth:`stop`, after the port is released."""

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Start answering, from a daemon thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop answering and release the port."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()
        on_stop, self.on_stop = self.on_stop, None
        if on_stop is not None:
            on_stop()


def _probe(check: Check) -> tuple[int, str, bytes]:
    try:
        results = dict(check())
    except Exception as exc:
        results = {"check": f"{type(exc).__name__}: {exc}"}
    healthy = bool(results) and all(value == "ok" for value in results.values())
    body = json.dumps({"healthy": healthy, **results}).encode() + b"\n"
    return (200 if healthy else 503), "application/json", body


def readiness(worker: Worker) -> dict[str, str]:
    """What ``/readyz`` checks: the store answers with the current schema, and the worker's
    transport answers its ``ping`` (a transport without one, like the database's, is as
    ready as the store)."""
    checks: dict[str, str] = {}
    try:
        worker.store.check_schema()
        checks["store"] = "ok"
    except Exception as exc:
        checks["store"] = f"{type(exc).__name__}: {exc}"
    try:
        ping = getattr(worker.transport, "ping", None)
        if callable(ping):
            ping()
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"{type(exc).__name__}: {exc}"
    return checks


def serve_worker(
    worker: Worker,
    *,
    port: int,
    host: str = "0.0.0.0",
    tenant_label: bool = False,
    dead_after: float | None = None,
) -> MetricsServer:
    """Count ``worker``'s work and serve it: register a :class:`MetricsPlugin` on its
    engine's plugins (as :data:`METRICS_PLUGIN`), the store's gauges (a worker is dead after
    ``dead_after`` seconds without a heartbeat; default three heartbeat intervals, at least
    30 s) and the worker's own leases, and start a :class:`MetricsServer` whose ``/healthz``
    is ok while the worker runs and ``/readyz`` is :func:`readiness`. The caller stops the
    server. Raises :class:`~ledgerflow.errors.PluginError` when the engine counts for another
    worker already, and :class:`OSError` when the port is taken."""
    metrics = Metrics(tenant_label=tenant_label)
    if dead_after is None:
        dead_after = max(30.0, worker.heartbeat_interval * 3)
    metrics.registry.register(
        StoreCollector(worker.store, transport=worker.broker_scheme, dead_after=dead_after)
    )
    metrics.worker_leases.set_function(lambda: len(worker.held))
    server = MetricsServer(
        metrics,
        port=port,
        host=host,
        live=lambda: {"worker": "stopping" if worker.stopping else "ok"},
        ready=lambda: readiness(worker),
    )
    plugins = worker.engine.plugins
    try:
        plugins.register(MetricsPlugin(metrics), METRICS_PLUGIN, source="builtin")
    except BaseException:
        server.stop()
        raise
    server.on_stop = lambda: plugins.manager.unregister(name=METRICS_PLUGIN)
    server.start()
    return server
