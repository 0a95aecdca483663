"""Two real worker processes on a real PostgreSQL, each serving /metrics: ``ledgerflow status``
shows them and the queue, their summed counters match the ledger, and a worker killed with
SIGKILL shows as dead once its heartbeats stop for longer than --dead-after."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from apps import counting_app
from ledgerflow.engine import Engine
from ledgerflow.store.schema import events

TESTS = Path(__file__).resolve().parents[1]
TENANT = "acme"
HEARTBEAT = 5.0  # the worker's heartbeat interval
DEAD_AFTER = 7.0  # above it, so a live worker never looks dead


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_worker(db_url: str, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ledgerflow",
            "--db",
            db_url,
            "--app",
            "apps.counting_app",
            "worker",
            "--concurrency",
            "2",
            "--poll-interval",
            "0.05",
            "--metrics-port",
            str(port),
            "--metrics-host",
            "127.0.0.1",
        ],
        env={**os.environ, "PYTHONPATH": str(TESTS)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def status(db_url: str) -> dict[str, object]:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "ledgerflow",
            "--db",
            db_url,
            "status",
            "--json",
            "--dead-after",
            str(DEAD_AFTER),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    answer: dict[str, object] = json.loads(run.stdout)
    return answer


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def summed(
    scrapes: list[dict[tuple[str, frozenset[tuple[str, str]]], float]], name: str, **labels: str
) -> float:
    return sum(
        value
        for samples in scrapes
        for (n, got), value in samples.items()
        if n == name and set(labels.items()) <= got
    )


def wait_for(what: str, check: object, timeout: float) -> float:
    """Poll ``check()`` until true; returns how long it took."""
    assert callable(check)
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if check():
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_two_workers_are_seen_counted_and_a_killed_one_is_dead(counting: Engine) -> None:
    db_url = counting.store.engine.url.render_as_string(hide_password=False)
    ports = [free_port(), free_port()]
    workers = [start_worker(db_url, port) for port in ports]
    try:
        for port in ports:
            wait_for(
                f"/readyz on {port}",
                lambda port=port: httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200,
                60,
            )
        seen = status(db_url)
        workers_seen = seen["workers"]
        assert isinstance(workers_seen, dict)
        assert workers_seen["alive"] == 2
        assert {w["pid"] for w in workers_seen["list"]} == {p.pid for p in workers}

        executions = [counting.create_execution("Counting", tenant=TENANT) for _ in range(8)]
        for x in executions:
            for n in range(3):
                counting.enqueue_event(x, "Hit", tenant=TENANT, payload={"n": n})
        for x in executions[:3]:
            counting.enqueue_event(x, "Close", tenant=TENANT)
            counting.enqueue_event(x, "Hit", tenant=TENANT, payload={"n": 9})  # rejected

        def drained() -> bool:
            queue = status(db_url)["queue"]
            assert isinstance(queue, dict)
            return bool(queue["depth"] == 0)

        wait_for("the queue to drain", drained, 60)

        with counting.store.read() as conn:
            conn.execute(sa.text("SELECT set_config('ledgerflow.tenant', '*', true)"))
            ledger: dict[str, int] = dict(
                conn.execute(
                    sa.select(events.c.status, sa.func.count())
                    .where(events.c.kind == "event_received")
                    .group_by(events.c.status)
                ).all()
            )
            hits = conn.execute(sa.select(sa.func.count()).select_from(counting_app.hits)).scalar()
        assert ledger == {"processed": 27, "rejected": 3}
        scrapes = [scrape(port) for port in ports]
        for state, count in ledger.items():
            assert summed(scrapes, "ledgerflow_events_processed_total", status=state) == count
        steps = summed(scrapes, "ledgerflow_steps_total", outcome="succeeded")
        if steps != hits:
            # a step counted more often than effects happened: some attempt at an event was
            # abandoned after its step and redone; what the workers logged says why
            for process in workers:
                process.send_signal(signal.SIGTERM)
            logged = [
                line
                for process in workers
                for line in process.communicate(timeout=30)[1].splitlines()
                if "WARNING" in line or "ERROR" in line or "Error" in line
            ]
            pytest.fail(
                f"{steps} steps succeeded, {hits} effects; workers logged:\n"
                + "\n".join(logged[-80:])
            )
        assert hits == 24
        for samples in scrapes:  # the store's gauges, the same from either worker
            assert summed([samples], "ledgerflow_queue_depth", transport="database") == 0
            assert summed([samples], "ledgerflow_workers", state="alive") == 2

        doomed, survivor = workers
        doomed.send_signal(signal.SIGKILL)
        assert doomed.wait(timeout=10) == -signal.SIGKILL

        def dead() -> bool:
            listed = status(db_url)["workers"]
            assert isinstance(listed, dict)
            states = {w["pid"]: w["state"] for w in listed["list"]}
            return states == {doomed.pid: "dead", survivor.pid: "alive"}

        took = wait_for("the killed worker to show as dead", dead, HEARTBEAT + DEAD_AFTER + 5)
        assert took <= HEARTBEAT + DEAD_AFTER + 5
        assert httpx.get(f"http://127.0.0.1:{ports[1]}/healthz").status_code == 200
    finally:
        for process in workers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in workers:
            try:
                process.communicate(timeout=30)  # reaps it and closes its pipes
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()
