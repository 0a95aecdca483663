"""Distributed workers on Redis Streams with PostgreSQL as the ledger: real worker processes,
a real (private) Redis server, real SIGKILL and Redis restarts. Every event is processed
exactly once, every database action's row is present exactly once, per-execution order is
kept, and nothing is lost while Redis is down."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import sqlalchemy as sa
from ledgerflow_redis.testing import RedisServer
from ledgerflow_redis.transport import RedisTransport

from apps import counting_app
from ledgerflow.engine import Engine
from ledgerflow.store import ALL_TENANTS

TESTS = Path(__file__).resolve().parents[1]
TENANT = "acme"
MAX_DELIVERIES = 5
BROKER = {"streams": 4, "claim_idle": 1, "claim_every": 0.5, "max_deliveries": MAX_DELIVERIES}


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def log(tmp_path: Path) -> Iterator[IO[str]]:
    """Where the workers write their logs (shown when a test fails)."""
    with (tmp_path / "workers.log").open("w+") as file:
        yield file


@pytest.fixture
def ledger(pg_url: str, redis_server: RedisServer) -> Iterator[Engine]:
    engine = Engine(pg_url, broker=redis_server.url(**BROKER))
    counting_app.setup(engine)
    yield engine
    engine.close()


def worker(engine: Engine, broker: str, log: IO[str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ledgerflow",
            "--db",
            engine.store.url,
            "--broker",
            broker,
            "--app",
            "apps.counting_app",
            "worker",
            "--concurrency",
            "2",
            "--lease-ttl",
            "2",
            "--poll-interval",
            "0.2",
            *args,
        ],
        env={**os.environ, "PYTHONPATH": str(TESTS)},
        # to a file: a pipe nobody reads would fill up and block the worker
        stdout=subprocess.DEVNULL,
        stderr=log,
        text=True,
    )


def stop(workers: list[subprocess.Popen[str]]) -> None:
    for process in workers:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in workers:
        try:
            process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def pending(engine: Engine, executions: list[str]) -> int:
    with engine.store.read(tenant=ALL_TENANTS) as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM lf_events WHERE kind = 'event_received' "
                    "AND status = 'pending' AND execution_id = ANY(:ids)"
                ),
                {"ids": executions},
            ).scalar_one()
        )


def wait_until_done(engine: Engine, executions: list[str], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while pending(engine, executions):
        assert time.monotonic() < deadline, f"{pending(engine, executions)} events still pending"
        time.sleep(0.2)


def show(log: IO[str]) -> str:
    log.flush()
    log.seek(0)
    return log.read()[-4000:]


def enqueue(engine: Engine, executions: list[str], per_execution: int) -> None:
    """``per_execution`` hits to each execution, interleaved across executions, numbered in
    the order they are appended to each."""
    for n, execution_id in itertools.product(range(per_execution), executions):
        engine.enqueue_event(execution_id, "Hit", tenant=TENANT, payload={"n": n})


def check_exactly_once_in_order(engine: Engine, executions: list[str], per_execution: int) -> None:
    with engine.store.read(tenant=ALL_TENANTS) as conn:
        rows = conn.execute(
            sa.select(counting_app.hits)
            .where(counting_app.hits.c.execution_id.in_(executions))
            .order_by(counting_app.hits.c.started)
        ).all()
        statuses = conn.execute(
            sa.text(
                "SELECT status, count(*) FROM lf_events WHERE kind = 'event_received' "
                "AND execution_id = ANY(:ids) GROUP BY status"
            ),
            {"ids": executions},
        ).all()
        successes = conn.execute(
            sa.text(
                "SELECT count(*) FROM lf_events WHERE kind = 'step_succeeded' "
                "AND execution_id = ANY(:ids)"
            ),
            {"ids": executions},
        ).scalar_one()
    total = len(executions) * per_execution
    assert dict(statuses) == {"processed": total}  # every event decided exactly once
    assert len(rows) == total  # every effect present, none doubled (one row per key)
    assert successes == total  # and recorded once in the ledger
    for execution_id in executions:
        mine = [r.n for r in rows if r.execution_id == execution_id]
        assert mine == list(range(per_execution)), f"{execution_id} out of order: {mine}"
    for execution_id in executions[:10]:
        replayed = engine.replay(execution_id, tenant=TENANT)
        assert replayed.seq == engine.get_execution(execution_id, tenant=TENANT).seq


def test_three_workers_process_2000_events_exactly_once_in_order(
    ledger: Engine, redis_server: RedisServer, log: IO[str]
) -> None:
    executions = [ledger.create_execution("Counting", tenant=TENANT) for _ in range(200)]
    workers = [worker(ledger, redis_server.url(**BROKER), log) for _ in range(3)]
    try:
        enqueue(ledger, executions, 10)
        wait_until_done(ledger, executions, 240)
    finally:
        stop(workers)
    for process in workers:
        assert process.returncode == 0, show(log)
    check_exactly_once_in_order(ledger, executions, 10)
    listed = subprocess.run(
        [sys.executable, "-m", "ledgerflow", "--db", ledger.store.url, "workers", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    redis_workers = [w for w in json.loads(listed.stdout) if w["broker"] == "redis"]
    assert len(redis_workers) >= 3
    assert sum(w["events"] for w in redis_workers[:3]) >= 1


def test_a_killed_workers_messages_are_taken_over(
    ledger: Engine, redis_server: RedisServer, log: IO[str]
) -> None:
    executions = [ledger.create_execution("Counting", tenant=TENANT) for _ in range(60)]
    workers = [worker(ledger, redis_server.url(**BROKER), log) for _ in range(3)]
    try:
        enqueue(ledger, executions, 5)
        deadline = time.monotonic() + 60
        while pending(ledger, executions) > 200:  # let them get going
            assert time.monotonic() < deadline
            time.sleep(0.05)
        workers[0].send_signal(signal.SIGKILL)
        workers[0].communicate(timeout=30)
        assert workers[0].returncode == -signal.SIGKILL
        wait_until_done(ledger, executions, 180)
    finally:
        stop(workers)
    check_exactly_once_in_order(ledger, executions, 5)


def test_redis_restarted_without_persistence_loses_nothing(
    ledger: Engine, redis_server: RedisServer, log: IO[str]
) -> None:
    executions = [ledger.create_execution("Counting", tenant=TENANT) for _ in range(60)]
    workers = [worker(ledger, redis_server.url(**BROKER), log) for _ in range(2)]
    try:
        enqueue(ledger, executions, 3)
        redis_server.stop()  # every stream, group and pending entry is gone
        for execution_id in executions[:20]:  # committed while Redis is down: the outbox has them
            ledger.enqueue_event(execution_id, "Hit", tenant=TENANT, payload={"n": 3})
        redis_server.start()
        for execution_id in executions[20:]:
            ledger.enqueue_event(execution_id, "Hit", tenant=TENANT, payload={"n": 3})
        wait_until_done(ledger, executions, 180)
    finally:
        stop(workers)
    with ledger.store.read(tenant=ALL_TENANTS) as conn:
        count = conn.execute(
            sa.select(sa.func.count())
            .select_from(counting_app.hits)
            .where(counting_app.hits.c.execution_id.in_(executions))
        ).scalar_one()
    assert count == 60 * 4
    check_exactly_once_in_order(ledger, executions, 4)


def test_an_event_enqueued_while_redis_is_down_is_processed_when_it_returns(
    ledger: Engine, redis_server: RedisServer, log: IO[str]
) -> None:
    execution_id = ledger.create_execution("Counting", tenant=TENANT)
    redis_server.stop()
    event_id = ledger.enqueue_event(execution_id, "Hit", tenant=TENANT, payload={"n": 0})
    assert ledger.event_status(event_id, tenant=TENANT).status == "pending"
    redis_server.start()
    workers = [worker(ledger, redis_server.url(**BROKER), log)]
    try:
        wait_until_done(ledger, [execution_id], 60)
    finally:
        stop(workers)
    check_exactly_once_in_order(ledger, [execution_id], 1)


def test_malformed_and_poison_messages_reach_the_dead_letters(
    ledger: Engine, redis_server: RedisServer, log: IO[str]
) -> None:
    url = redis_server.url(**BROKER)
    transport = RedisTransport(url, ledger)
    execution_id = ledger.create_execution("Counting", tenant=TENANT)
    poison = ledger.enqueue_event(execution_id, "Hit", tenant=TENANT, payload={"n": 0})
    stream = transport.stream_for(execution_id)
    with redis_server.client() as client:
        client.xadd(stream, {"v": "1", "garbage": "yes"})
    # consumers that take the wake-up and die before acknowledging it, again and again
    for n in range(MAX_DELIVERIES):
        deadline = time.monotonic() + 10
        while not any(
            d.wakeup and d.wakeup.event_id == poison
            for d in transport.receive(f"doomed-{n}", count=10, block=0.2)
        ):
            assert time.monotonic() < deadline, "the wake-up never came round again"
            time.sleep(0.3)
    transport.close()
    workers = [worker(ledger, url, log)]
    try:
        deadline = time.monotonic() + 60
        while len(ledger.store.dead_letter_rows()) < 2:
            assert time.monotonic() < deadline, ledger.store.dead_letter_rows()
            time.sleep(0.2)
        wait_until_done(ledger, [execution_id], 60)  # the sweep still processes the event
    finally:
        stop(workers)
    letters = {r.event_id: r for r in ledger.store.dead_letter_rows()}
    assert letters[poison].deliveries == MAX_DELIVERIES + 1
    assert "delivered 6 times" in letters[poison].reason
    assert letters[None].reason.startswith("malformed message")
    assert letters[None].message["garbage"] == "yes"
    assert len(redis_server.entries("ledgerflow:dead-letters")) == 2
    assert not redis_server.pending(stream)  # both acknowledged


def test_the_relay_leaves_alone_what_the_fast_path_just_published(
    ledger: Engine, redis_server: RedisServer
) -> None:
    execution_id = ledger.create_execution("Counting", tenant=TENANT)
    ledger.enqueue_event(execution_id, "Hit", tenant=TENANT, payload={"n": 0})
    assert (
        redis_server.length(RedisTransport(redis_server.url(**BROKER)).stream_for(execution_id))
        == 1
    )
    # still unhandled (no worker runs), but young: not sent a second time
    assert ledger.store.relay_claim(older_than=0, again_after=60, limit=10) == []
    # unhandled long after: sent again
    assert len(ledger.store.relay_claim(older_than=0, again_after=0, limit=10)) == 1
