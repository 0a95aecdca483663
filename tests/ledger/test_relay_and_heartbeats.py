"""The store's side of broker transports: the outbox relay's claims, dead letters and worker
heartbeats, and the commands that show them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from ledgerflow.engine import Engine
from ledgerflow.store import ALL_TENANTS
from ledgerflow.worker import Worker

TENANT = "acme"
PAYLOAD = {"invoice": {"id": "INV-1", "total": 120, "customer_id": "C-1"}}


def test_a_lease_given_up_is_never_renewed_back(engine: Engine) -> None:
    """The worker's renewer may hold a lease in its list just as the lease is given up: its
    renewal must not hold the execution for another lease time with nobody working on it."""
    execution_id = engine.create_execution("InvoiceApproval", tenant=TENANT)
    token = engine.store.take_lease(execution_id, "w1", 30)
    assert token is not None
    assert engine.store.renew_lease(execution_id, "w1", token, 30)
    engine.store.release_lease(execution_id, "w1", token)
    assert not engine.store.renew_lease(execution_id, "w1", token, 30)
    assert engine.store.take_lease(execution_id, "w2", 30) is not None


def test_concurrent_relays_take_different_wakeups_once_each(engine: Engine) -> None:
    ids = []
    for n in range(30):
        execution_id = engine.create_execution("InvoiceApproval", tenant=TENANT)
        invoice = {"invoice": {"id": f"INV-{n}", "total": 120, "customer_id": "C-1"}}
        engine.enqueue_event(
            execution_id, "CreateInvoice", tenant=TENANT, role="clerk", payload=invoice
        )
        ids.append(execution_id)
    taken: list[list[tuple[str, str, str]]] = [[] for _ in range(4)]

    def relay(n: int) -> None:
        while True:
            rows = engine.store.relay_claim(older_than=0, again_after=60, limit=3)
            if not rows:
                return
            taken[n] += rows

    threads = [threading.Thread(target=relay, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [row for rows in taken for row in rows]
    assert sorted(e for e, _, _ in every) == sorted(ids)  # each wake-up once, none left out
    assert all(t == TENANT for _, t, _ in every)
    assert engine.store.relay_claim(older_than=0, again_after=60, limit=100) == []
    # relayed ones come round again if still unhandled after again_after
    assert len(engine.store.relay_claim(older_than=0, again_after=0, limit=100)) == 30
    # fresh ones wait for older_than: the fast path had its chance
    assert engine.store.relay_claim(older_than=3600, again_after=0, limit=100) == []
    # handled ones are never relayed
    Worker(engine, poll_interval=0.01).run_once()
    assert engine.store.relay_claim(older_than=0, again_after=0, limit=100) == []


def cli(db: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ledgerflow", "--db", db, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        input=stdin,
        env={**os.environ, "LEDGERFLOW_DISABLE_PLUGINS": "notify,billing,redis"},
    )


def test_workers_report_heartbeats_and_are_listed_running_stopped_or_dead(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/beats.db"
    assert cli(db, "db", "upgrade").returncode == 0
    engine = Engine(db)
    try:
        stopped = Worker(engine, name="done-worker", heartbeat_interval=0.05)
        stopped.run(until_idle=True)
        health = tmp_path / "healthy"
        running = Worker(
            engine,
            name="live-worker",
            heartbeat_interval=0.05,
            poll_interval=0.05,
            health_file=str(health),
        )
        thread = threading.Thread(target=running.run)
        thread.start()
        try:
            time.sleep(0.3)
            engine.store.beat(  # a worker that stopped beating long ago without saying so
                {
                    "id": "lost-worker",
                    "host": "elsewhere",
                    "pid": 1,
                    "version": "0",
                    "broker": "database",
                    "concurrency": 1,
                    "started_at": 0.0,
                    "stopped_at": None,
                    "in_flight": 1,
                    "executions": 0,
                    "events": 0,
                    "errors": 0,
                }
            )
            with engine.store.write(tenant=ALL_TENANTS) as conn:
                conn.exec_driver_sql(
                    "UPDATE lf_workers SET last_beat = 1000 WHERE id = 'lost-worker'"
                )
            listed = cli(db, "workers", "--json")
            assert listed.returncode == 0, listed.stderr
            states = {w["id"]: w for w in json.loads(listed.stdout)}
            assert states["live-worker"]["state"] == "running"
            assert states["live-worker"]["pid"] == os.getpid()
            assert states["done-worker"]["state"] == "stopped"
            assert states["lost-worker"]["state"] == "dead"
            text = cli(db, "workers").stdout
            assert "lost-worker" in text
            assert "dead" in text
            assert time.time() - health.stat().st_mtime < 5  # touched after recent beats
        finally:
            running.stop()
            thread.join()
    finally:
        engine.close()


def test_dead_letters_are_listed_shown_retried_and_discarded(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/dead.db"
    assert cli(db, "db", "upgrade").returncode == 0
    engine = Engine(db)
    try:
        poison = engine.store.insert_dead_letter(
            transport="redis",
            transport_id="ledgerflow:dead-letters|1-0",
            message={"v": "1", "execution_id": "e1", "tenant": TENANT, "event_id": "ev1"},
            reason="delivered 6 times without being acknowledged",
            deliveries=6,
            tenant=TENANT,
            execution_id="e1",
            event_id="ev1",
        )
        garbage = engine.store.insert_dead_letter(
            transport="redis",
            transport_id="ledgerflow:dead-letters|2-0",
            message={"junk": "\x00?"},
            reason="malformed message: no field execution_id",
            deliveries=1,
        )
    finally:
        engine.close()
    listed = json.loads(cli(db, "dead-letters", "list", "--json").stdout)
    assert {d["id"] for d in listed} == {poison, garbage}
    shown = json.loads(cli(db, "dead-letters", "show", poison).stdout)
    assert (shown["execution_id"], shown["deliveries"]) == ("e1", 6)

    refused = cli(db, "dead-letters", "retry", garbage)
    assert refused.returncode == 2
    assert "malformed message with nothing to retry" in refused.stderr
    retried = cli(db, "dead-letters", "retry", poison)
    assert retried.returncode == 0, retried.stderr
    assert "published again" in retried.stdout
    assert cli(db, "dead-letters", "retry", poison).returncode == 2  # settled already

    assert cli(db, "dead-letters", "discard", garbage, stdin="n\n").returncode == 1  # declined
    assert cli(db, "dead-letters", "discard", garbage, "--yes").returncode == 0
    assert json.loads(cli(db, "dead-letters", "list", "--json").stdout) == []
    everything = json.loads(cli(db, "dead-letters", "list", "--all", "--json").stdout)
    assert {d["id"]: bool(d["discarded_at"]) for d in everything} == {
        poison: False,
        garbage: True,
    }
    missing = cli(db, "dead-letters", "show", "nope")
    assert (missing.returncode, missing.stderr.strip()) == (2, "error: dead letter nope not found")


def test_health_says_whether_the_store_answers_with_the_current_schema(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/health.db"
    missing = cli(db, "health", "--json")
    assert missing.returncode == 1
    report = json.loads(missing.stdout)
    assert report["healthy"] is False
    assert "ledgerflow db upgrade" in report["store"]
    assert cli(db, "db", "upgrade").returncode == 0
    fine = cli(db, "health")
    assert (fine.returncode, fine.stdout) == (0, "store: ok\nbroker: ok\n")


def test_health_says_whether_redis_answers(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/health.db"
    assert cli(db, "db", "upgrade").returncode == 0
    env_plugins = {**os.environ, "LEDGERFLOW_DISABLE_PLUGINS": "notify,billing"}
    down = subprocess.run(
        [
            sys.executable,
            "-m",
            "ledgerflow",
            "--db",
            db,
            "--broker",
            "redis://127.0.0.1:1/0",
            "health",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env_plugins,
    )
    assert down.returncode == 1
    report = json.loads(down.stdout)
    assert report["store"] == "ok"
    assert "RedisUnavailableError" in report["broker"]
