"""Real worker subprocesses on a real database: no overlap, recovery after SIGKILL."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from apps import counting_app
from ledgerflow.engine import Engine
from ledgerflow.store import ALL_TENANTS

TESTS = Path(__file__).resolve().parents[1]
TENANT = "acme"

PG_ADMIN = os.environ.get("LEDGERFLOW_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def worker(db_url: str, *args: str, **env: str) -> subprocess.Popen[str]:
    environment = {**os.environ, "PYTHONPATH": str(TESTS), **env}
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
            "--poll-interval",
            "0.05",
            *args,
        ],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def listening(engine: Engine) -> bool:
    """Whether a session of the engine's database is listening, as an administrator sees it
    (the ledger's database keeps pg_stat_activity from ordinary roles)."""
    database = engine.store.engine.url.database
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND query LIKE 'LISTEN %%'",
            (database,),
        ).fetchone()
    assert row is not None
    return bool(row[0])


def held(engine: Engine, execution_id: str) -> bool:
    with engine.store.read(tenant=ALL_TENANTS) as conn:
        expires = conn.execute(
            sa.text("SELECT expires_at FROM lf_leases WHERE execution_id = :id"),
            {"id": execution_id},
        ).scalar()
    return expires is not None and expires > time.time()


def hit_rows(engine: Engine) -> list[sa.Row[tuple[object, ...]]]:
    with engine.store.read(tenant=ALL_TENANTS) as conn:
        return list(
            conn.execute(sa.select(counting_app.hits).order_by(counting_app.hits.c.started))
        )


def test_two_worker_processes_never_work_on_one_execution_at_once(counting: Engine) -> None:
    executions = [counting.create_execution("Counting", tenant=TENANT) for _ in range(6)]
    for n in range(5):
        for execution_id in executions:
            counting.enqueue_event(execution_id, "Hit", tenant=TENANT, payload={"n": n})
    procs = [
        worker(
            counting.store.url, "--until-idle", "--concurrency", "2", COUNTING_STEP_SECONDS="0.01"
        )
        for _ in range(2)
    ]
    errors = []
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        errors.append(err)
    rows = hit_rows(counting)
    statuses = [
        (h.seq, h.kind, h.status, h.detail)
        for x in executions
        for h in counting.history(x, tenant=TENANT)
        if h.kind in ("event_received", "step_failed")
    ]
    assert len(rows) == 30, (statuses, errors)  # every effect exactly once
    assert len({r.key for r in rows}) == 30
    for execution_id in executions:
        mine = [r for r in rows if r.execution_id == execution_id]
        assert [r.n for r in mine] == list(range(5))  # in ledger order
        for earlier, later in itertools.pairwise(mine):
            assert earlier.finished <= later.started  # one at a time
        history = counting.history(execution_id, tenant=TENANT)
        assert all(h.status == "processed" for h in history if h.kind == "event_received")
        assert [h.seq for h in history] == list(range(1, len(history) + 1))


def test_a_worker_killed_mid_action_is_recovered_by_another(
    counting: Engine, tmp_path: Path
) -> None:
    execution_id = counting.create_execution("Counting", tenant=TENANT)
    event_id = counting.enqueue_event(execution_id, "Hit", tenant=TENANT, payload={"n": 7})
    marker = tmp_path / "hanging"
    doomed = worker(counting.store.url, "--lease-ttl", "1", COUNTING_HANG_MARKER=str(marker))
    deadline = time.monotonic() + 60
    while not marker.exists():
        if doomed.poll() is not None:
            pytest.fail(f"the worker exited early: {doomed.communicate()[1]}")
        assert time.monotonic() < deadline, "the worker never reached the action"
        time.sleep(0.05)
    # the effect is written inside the action's transaction, not yet committed
    doomed.send_signal(signal.SIGKILL)
    doomed.communicate(timeout=30)
    assert doomed.returncode == -signal.SIGKILL
    assert hit_rows(counting) == []
    assert counting.event_status(event_id, tenant=TENANT).status == "pending"
    time.sleep(1.5)  # let the dead worker's lease expire
    rescuer = worker(counting.store.url, "--until-idle", "--lease-ttl", "1")
    _, err = rescuer.communicate(timeout=120)
    assert rescuer.returncode == 0, err
    rows = hit_rows(counting)
    assert [(r.n, r.key) for r in rows] == [(7, f"{execution_id}:{event_id}:hit")]
    assert counting.event_status(event_id, tenant=TENANT).status == "processed"
    kinds = [h.kind for h in counting.history(execution_id, tenant=TENANT)]
    assert kinds.count("step_succeeded") == 1


def test_sigterm_lets_the_worker_finish_the_event_in_hand(counting: Engine, tmp_path: Path) -> None:
    execution_id = counting.create_execution("Counting", tenant=TENANT)
    first = counting.enqueue_event(execution_id, "Hit", tenant=TENANT, payload={"n": 1})
    marker = tmp_path / "started"
    proc = worker(
        counting.store.url, COUNTING_STEP_SECONDS="1.5", COUNTING_STARTED_MARKER=str(marker)
    )
    deadline = time.monotonic() + 60
    while not marker.exists():  # the action of the event is under way
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "processed 1 events" in out
    assert counting.event_status(first, tenant=TENANT).status == "processed"
    assert len(hit_rows(counting)) == 1


def test_a_postgresql_worker_wakes_on_notify_not_on_its_poll(pg_url: str) -> None:
    engine = Engine(pg_url)
    counting_app.setup(engine)
    proc = worker(pg_url, "--poll-interval", "60")
    try:
        deadline = time.monotonic() + 60
        while not listening(engine):  # the worker's LISTEN is in place
            assert time.monotonic() < deadline, "the worker never listened"
            time.sleep(0.1)
        execution_id = engine.create_execution("Counting", tenant="notify")
        event_id = engine.enqueue_event(execution_id, "Hit", tenant="notify", payload={"n": 3})
        deadline = time.monotonic() + 30  # far below the 60 s poll
        while engine.event_status(event_id, tenant="notify").status == "pending":
            assert time.monotonic() < deadline, "the worker was not woken by NOTIFY"
            time.sleep(0.1)
        assert engine.event_status(event_id, tenant="notify").status == "processed"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        engine.close()


def test_a_stopping_worker_keeps_its_lease_until_the_event_is_committed(
    pg_url: str, tmp_path: Path
) -> None:
    # PostgreSQL only: on SQLite the action's open write transaction blocks any rival anyway
    counting = Engine(pg_url)
    counting_app.setup(counting)
    with counting.store.write(tenant=ALL_TENANTS) as conn:
        conn.execute(counting_app.hits.delete())
    execution_id = counting.create_execution("Counting", tenant=TENANT)
    event_id = counting.enqueue_event(execution_id, "Hit", tenant=TENANT, payload={"n": 1})
    marker = tmp_path / "started"
    proc = worker(
        counting.store.url,
        "--lease-ttl",
        "1",
        COUNTING_STEP_SECONDS="2.5",
        COUNTING_STARTED_MARKER=str(marker),
    )
    deadline = time.monotonic() + 60
    while not marker.exists():  # the action of the event is under way
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert held(counting, execution_id)
    proc.send_signal(signal.SIGTERM)  # long before the 2.5 s action ends; the lease lives 1 s
    time.sleep(1.5)
    rival = counting.store.take_lease(execution_id, "rival", 30)
    assert rival is None  # still renewed by the stopping worker
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert counting.event_status(event_id, tenant=TENANT).status == "processed"
    assert len(hit_rows(counting)) == 1
    counting.close()
