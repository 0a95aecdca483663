"""Scenario 2: the servers go away mid-run. Redis is restarted without persistence twice (every
stream, group and pending entry lost) and PostgreSQL is restarted once, while workers process
and clients enqueue. Workers reconnect by themselves; a client sees a clear, typed error while
the database is down and succeeds once it is back; nothing acknowledged is lost."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import pytest
from ledgerflow_redis.testing import RedisServer

from chaos.battery import Fleet, Load, audit, check, record, seed_canary, size, wait_until
from chaos.servers import PrivatePostgres
from ledgerflow.engine import Engine
from ledgerflow.errors import LedgerflowError, StoreUnavailableError

T = TypeVar("T")


def patiently(load: Load, call: Callable[[], T], *, timeout: float) -> T:
    """What a careful client does: retry ``call`` after a ledgerflow error (counted by type),
    for at most ``timeout`` seconds. Anything else is not a clear error: it propagates."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except LedgerflowError as exc:
            load.client_errors[type(exc).__name__] += 1
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def reached(load: Load, decided: float) -> bool:
    """Whether at least ``decided`` events are decided."""
    return load.decided() >= decided


def test_redis_and_postgresql_restarted_mid_run_lose_nothing(
    chaos: Engine, fleet: Fleet, redis_server: RedisServer, private_pg: PrivatePostgres
) -> None:
    run = size()
    started = time.monotonic()
    canary = seed_canary(chaos)
    load = Load(engine=chaos)
    executions = load.create(run.executions)
    for _ in range(run.workers):
        fleet.spawn()
    fleet.wait_ready(chaos, run.deadline)
    failure: list[BaseException] = []

    def clients() -> None:
        try:
            for n in range(run.hits):
                for x in executions:
                    # a client key makes the retry of an append that did commit harmless
                    patiently(load, functools.partial(load.hit, x, n, key=f"{x}:{n}"), timeout=120)
            for number in range(run.invoices):
                patiently(load, functools.partial(load.invoice, number), timeout=120)
        except BaseException as exc:  # reported by the test's thread
            failure.append(exc)

    enqueuer = threading.Thread(target=clients, name="chaos-clients")
    enqueuer.start()
    try:
        # the faults strike while the workers are busy: at a fifth, two fifths and three
        # fifths of the events decided
        for fraction in (0.2, 0.4):
            wait_until(
                functools.partial(reached, load, run.events * fraction),
                timeout=run.deadline,
                what=f"{fraction:.0%} of the events decided",
            )
            redis_server.restart()  # empty: no persistence
        wait_until(
            functools.partial(reached, load, run.events * 0.6),
            timeout=run.deadline,
            what="60% of the events decided",
        )
        private_pg.stop()
        try:
            # while the database is down, a client gets a typed error that says so
            x = executions[0]
            with pytest.raises(StoreUnavailableError, match="database"):
                chaos.enqueue_event(x, "Hit", tenant=load.executions[x], payload={"n": -1})
            with pytest.raises(StoreUnavailableError, match="database"):
                chaos.get_execution(x, tenant=load.executions[x])
            time.sleep(1.5)  # the workers meet the outage too
        finally:
            private_pg.start()
        # and once it is back, the same call succeeds (the pool's dead connections are
        # replaced, not handed out)
        x = executions[-1]
        assert chaos.get_execution(x, tenant=load.executions[x]).id == x
        enqueuer.join(timeout=run.deadline)
        assert not enqueuer.is_alive()
        assert not failure, failure
        load.wait_processed(fleet, run.deadline)
    finally:
        enqueuer.join(timeout=30)
    # no worker died of the outages: each reconnected by itself
    assert len(fleet.alive) == run.workers, fleet.log()
    tally = audit(load, canary=canary)
    record(
        "Redis restarted twice, PostgreSQL once",
        tally,
        faults=3,
        seconds=time.monotonic() - started,
        notes=[
            f"{run.workers} workers",
            "client errors: "
            + (", ".join(f"{n} {t}" for t, n in sorted(load.client_errors.items())) or "none"),
        ],
    )
    check(tally, fleet)
