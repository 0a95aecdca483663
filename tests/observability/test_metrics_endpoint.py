"""ledgerflow.metrics in one process: a real worker on a real SQLite file counts what the ledger
records, and its endpoint answers /metrics, /healthz and /readyz over real HTTP."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from apps import counting_app
from ledgerflow.engine import Engine
from ledgerflow.errors import PluginError
from ledgerflow.metrics import (
    METRICS_PLUGIN,
    Metrics,
    MetricsPlugin,
    MetricsServer,
    StoreCollector,
    metric_names,
    readiness,
    serve_worker,
)
from ledgerflow.store.schema import events
from ledgerflow.worker import Worker

TESTS = Path(__file__).resolve().parents[1]
TENANT = "acme"


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, keyed by name and sorted labels."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(
        value
        for (n, got), value in samples.items()
        if n == name and set(labels.items()) <= set(got)
    )


@pytest.fixture
def counting_file(tmp_path: Path) -> Iterator[Engine]:
    """An engine on a fresh SQLite file with the counting app set up."""
    url = f"sqlite:///{tmp_path}/metrics.db"
    engine = Engine(url)
    engine.store.upgrade()
    counting_app.setup(engine)
    yield engine
    engine.close()


def fill(engine: Engine, executions: int = 3) -> None:
    """Per execution: two hits (applied, one step each), a close, then a hit after the end
    (rejected)."""
    for _ in range(executions):
        x = engine.create_execution("Counting", tenant=TENANT)
        for n in range(2):
            engine.enqueue_event(x, "Hit", tenant=TENANT, payload={"n": n})
        engine.enqueue_event(x, "Close", tenant=TENANT)
        engine.enqueue_event(x, "Hit", tenant=TENANT, payload={"n": 9})


def test_counts_match_the_ledger_and_probes_answer(counting_file: Engine) -> None:
    worker = Worker(counting_file, poll_interval=0.05, name="w-metrics")
    server = serve_worker(worker, port=0, host="127.0.0.1")
    try:
        fill(counting_file)
        samples = scrape(server.port)
        assert total(samples, "ledgerflow_queue_depth", transport="database") == 12
        assert total(samples, "ledgerflow_queue_oldest_age_seconds") >= 0
        assert httpx.get(f"http://127.0.0.1:{server.port}/healthz").json() == {
            "healthy": True,
            "worker": "ok",
        }
        ready = httpx.get(f"http://127.0.0.1:{server.port}/readyz")
        assert (ready.status_code, ready.json()) == (
            200,
            {"healthy": True, "store": "ok", "broker": "ok"},
        )

        worker.run(until_idle=True)

        with counting_file.store.read() as conn:
            by_status: dict[str, int] = dict(
                conn.execute(
                    sa.select(events.c.status, sa.func.count())
                    .where(events.c.kind == "event_received")
                    .group_by(events.c.status)
                ).all()
            )
            hits = conn.execute(sa.select(sa.func.count()).select_from(counting_app.hits)).scalar()
        assert by_status == {"processed": 9, "rejected": 3}
        samples = scrape(server.port)
        for status, count in by_status.items():
            assert total(samples, "ledgerflow_events_processed_total", status=status) == count
            assert (
                total(samples, "ledgerflow_event_processing_seconds_count", status=status) == count
            )
            assert total(samples, "ledgerflow_event_latency_seconds_count", status=status) == count
        assert total(samples, "ledgerflow_events_rejected_total", reason="execution_finished") == 3
        assert (
            total(samples, "ledgerflow_steps_total", action="count.hit", outcome="succeeded")
            == hits
            == 6
        )
        assert total(samples, "ledgerflow_step_duration_seconds_count", action="count.hit") == 6
        assert total(samples, "ledgerflow_executions_finished_total", status="completed") == 3
        assert total(samples, "ledgerflow_queue_depth") == 0
        assert total(samples, "ledgerflow_store_up") == 1
        assert total(samples, "ledgerflow_workers", state="stopped") == 1
        assert total(samples, "ledgerflow_worker_leases_held") == 0
        # appended through the engine whose plugins count for this worker
        assert total(samples, "ledgerflow_events_enqueued_total") == 12
        assert all(info.errors == () for info in counting_file.plugins.describe())

        stopped = httpx.get(f"http://127.0.0.1:{server.port}/healthz")
        assert (stopped.status_code, stopped.json()["worker"]) == (503, "stopping")
        missing = httpx.get(f"http://127.0.0.1:{server.port}/nope")
        assert missing.status_code == 404
    finally:
        server.stop()
    assert not counting_file.plugins.manager.has_plugin(METRICS_PLUGIN)  # stop unregisters it
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=2)


def test_one_engine_counts_for_one_worker_at_a_time(counting_file: Engine) -> None:
    first = serve_worker(Worker(counting_file, name="w-1"), port=0, host="127.0.0.1")
    try:
        with pytest.raises(PluginError, match="already registered"):
            serve_worker(Worker(counting_file, name="w-2"), port=0, host="127.0.0.1")
    finally:
        first.stop()


def test_the_tenant_label_is_there_only_when_asked_for(counting_file: Engine) -> None:
    labelled = Metrics(tenant_label=True)
    plain = Metrics()
    counting_file.add_plugin(MetricsPlugin(labelled), "labelled")
    counting_file.add_plugin(MetricsPlugin(plain), "plain")
    fill(counting_file, executions=1)
    Worker(counting_file, poll_interval=0.05).run(until_idle=True)
    labelled_steps = [
        s for f in labelled.registry.collect() if f.name == "ledgerflow_steps" for s in f.samples
    ]
    plain_steps = [
        s for f in plain.registry.collect() if f.name == "ledgerflow_steps" for s in f.samples
    ]
    assert {s.labels.get("tenant") for s in labelled_steps if s.name.endswith("_total")} == {TENANT}
    assert all("tenant" not in s.labels for s in plain_steps)
    enqueued = [
        s.value
        for f in labelled.registry.collect()
        for s in f.samples
        if s.name == "ledgerflow_events_enqueued_total"
    ]
    assert enqueued == [4.0]  # this process appended them, through the same engine
    plain_enqueued = [
        s.value
        for f in plain.registry.collect()
        for s in f.samples
        if s.name == "ledgerflow_events_enqueued_total"
    ]
    assert plain_enqueued == [4.0]
    for info in counting_file.plugins.describe():
        assert info.errors == (), info  # no hook of either raised


def test_readyz_names_a_broker_that_does_not_answer(counting_file: Engine) -> None:
    worker = Worker(counting_file, broker="redis://127.0.0.1:1/0", name="w-redis")
    server = serve_worker(worker, port=0, host="127.0.0.1")
    try:
        answer = httpx.get(f"http://127.0.0.1:{server.port}/readyz", timeout=30)
        assert answer.status_code == 503
        report = answer.json()
        assert report["healthy"] is False
        assert report["store"] == "ok"
        assert "127.0.0.1:1" in report["broker"]
    finally:
        server.stop()
        worker.transport.close()


def test_a_store_that_does_not_answer_is_reported_not_raised(tmp_path: Path) -> None:
    # a real PostgreSQL server, asked for a database it does not have
    engine = Engine("postgresql://postgres@127.0.0.1:5432/ledgerflow_no_such_database")
    try:
        worker = Worker(engine, name="w-nodb")
        assert readiness(worker)["store"] != "ok"
        collected = list(StoreCollector(engine.store, transport="database").collect())
        assert [(f.name, [s.value for s in f.samples]) for f in collected] == [
            ("ledgerflow_store_up", [0.0])
        ]
    finally:
        engine.close()


def test_every_metric_a_registry_exports_is_named() -> None:
    names = metric_names(Metrics())
    assert {
        "ledgerflow_events_processed_total",
        "ledgerflow_step_duration_seconds_bucket",
        "ledgerflow_queue_oldest_age_seconds",
        "ledgerflow_workers",
        "ledgerflow_dead_letters",
    } <= names
    assert "ledgerflow_events_processed" not in names  # a counter's series ends in _total


@pytest.mark.parametrize("port", [-1, 65536, "80"])
def test_a_bad_port_is_refused(port: object) -> None:
    with pytest.raises(ValueError, match="port"):
        MetricsServer(Metrics(), port=port)  # type: ignore[arg-type]


def test_the_cli_refuses_a_taken_or_invalid_port(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/cli.db"
    store = Engine(db).store
    store.upgrade()
    store.close()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for args, code, message in [
            (["--metrics-port", str(port), "--metrics-host", "127.0.0.1"], 2, "cannot listen"),
            (["--metrics-port", "0"], 2, "--metrics-port"),
            (["--metrics-port", "http"], 2, "--metrics-port"),
        ]:
            run = subprocess.run(
                [sys.executable, "-m", "ledgerflow", "--db", db, "worker", "--until-idle", *args],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert run.returncode == code, run.stderr
            assert message in run.stderr
