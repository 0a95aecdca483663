"""What happens when things go wrong: failing executions, lost leases, races on a key."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import sqlalchemy as sa

import ledgerflow
from apps import counting_app
from ledgerflow.engine import Engine
from ledgerflow.errors import LeaseLostError
from ledgerflow.executor import GraphRunner, StepJob
from ledgerflow.registry import ActionContext
from ledgerflow.store import ALL_TENANTS
from ledgerflow.worker import Worker
from support.executions import ensure_execution

TENANT = "acme"


def hit_count(engine: Engine) -> int:
    with engine.store.read(tenant=ALL_TENANTS) as conn:
        return int(
            conn.execute(sa.select(sa.func.count()).select_from(counting_app.hits)).scalar_one()
        )


def job(engine: Engine, execution_id: str, fence: Any = None) -> StepJob:
    ensure_execution(engine.store, execution_id, TENANT, "Counting")
    definition = engine.definition("Counting", 1)
    transition = next(t for t in definition.transitions if t.id == "hit")
    return StepJob(
        execution_id=execution_id,
        tenant=TENANT,
        event_id="e1",
        steps=transition.steps,
        variables={
            "payload": {"n": 1},
            "context": {},
            "role": None,
            "event": "Hit",
            "state": "open",
        },
        fence=fence,
    )


def test_a_database_action_of_a_worker_that_lost_its_lease_commits_nothing(
    counting: Engine,
) -> None:
    def lost(conn: sa.Connection) -> None:
        raise LeaseLostError("taken over")

    runner = GraphRunner(counting.store, counting.registry)
    with pytest.raises(LeaseLostError):
        runner.run(job(counting, "x1", fence=lost))
    assert hit_count(counting) == 0
    with counting.store.read(tenant=ALL_TENANTS) as conn:
        assert counting.store.action_result(conn, "x1:e1:hit") == (False, None)


def test_two_runners_racing_on_one_key_agree_and_the_effect_happens_once(counting: Engine) -> None:
    runners = [GraphRunner(counting.store, counting.registry) for _ in range(2)]
    results: list[Any] = []
    barrier = threading.Barrier(2)
    racing = job(counting, "x2")  # its execution made once, before the race

    def run(runner: GraphRunner) -> None:
        barrier.wait()
        results.append(runner.run(racing))

    threads = [threading.Thread(target=run, args=(r,)) for r in runners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.failure for r in results] == [None, None]
    assert results[0].outcomes[0].result == results[1].outcomes[0].result
    assert hit_count(counting) == 1


def test_a_failing_execution_neither_spins_nor_blocks_the_others(counting: Engine) -> None:
    def explode(params: dict[str, Any], context: ActionContext) -> None:
        raise RuntimeError("boom")

    poisoned = counting.create_execution("Counting", tenant=TENANT)
    healthy = counting.create_execution("Counting", tenant=TENANT)
    counting.enqueue_event(poisoned, "Hit", tenant=TENANT, payload={"n": 1})
    counting.enqueue_event(healthy, "Hit", tenant=TENANT, payload={"n": 2})

    calls = 0
    real = counting.process

    def failing_process(execution_id: str, **kwargs: Any) -> int:
        nonlocal calls
        if execution_id == poisoned:
            calls += 1
            raise RuntimeError("the engine broke on this one")
        return real(execution_id, **kwargs)

    counting.process = failing_process  # type: ignore[method-assign]
    worker = Worker(counting, poll_interval=0.01, sweep_interval=0.05)
    stats = worker.run(until_idle=True)
    assert worker.failing == [poisoned]
    assert calls == 1  # held back, not spun
    assert stats.errors == 1
    statuses = {h.event_id: h.status for h in counting.history(healthy, tenant=TENANT)}
    assert "processed" in statuses.values()
    assert hit_count(counting) == 1


def test_wakeups_of_undecided_events_stay_unhandled(counting: Engine) -> None:
    execution_id = counting.create_execution("Counting", tenant=TENANT)
    counting.enqueue_event(execution_id, "Hit", tenant=TENANT, payload={"n": 1})
    with counting.store.write(tenant=ALL_TENANTS) as conn:
        counting.store.mark_handled(conn, execution_id)
    claimed = counting.store.claim("w", 30)
    assert claimed is not None
    assert claimed[0] == execution_id


def test_a_worker_refuses_an_in_memory_database() -> None:
    engine = Engine("sqlite://")
    with pytest.raises(ValueError, match="in-memory SQLite"):
        Worker(engine)
    engine.close()


def test_inputs_the_database_cannot_hold_are_refused(engine: Engine) -> None:
    execution_id = engine.create_execution("InvoiceApproval", tenant=TENANT)
    before = engine.store.row_counts()
    payload = {"invoice": {"id": "a\x00b", "total": 1, "customer_id": "c"}}
    with pytest.raises(ledgerflow.InvalidInputError, match="NUL"):
        engine.enqueue_event(
            execution_id, "CreateInvoice", tenant=TENANT, role="clerk", payload=payload
        )
    with pytest.raises(ledgerflow.InvalidInputError, match="longer than 200"):
        engine.enqueue_event(execution_id, "CreateInvoice", tenant="t" * 201)
    with pytest.raises(ledgerflow.InvalidInputError, match="longer than 200"):
        engine.enqueue_event(execution_id, "CreateInvoice", tenant=TENANT, role="r" * 201)
    with pytest.raises(ledgerflow.InvalidInputError, match="longer than 200"):
        engine.enqueue_event(execution_id, "CreateInvoice", tenant=TENANT, key="k" * 201)
    with pytest.raises(ledgerflow.InvalidInputError, match="cannot be used"):
        engine.create_execution("InvoiceApproval", tenant="globex", execution_id=execution_id)
    assert engine.store.row_counts() == before


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_claim_never_deadlocks_with_a_late_worker_committing(db_url: str) -> None:
    """A worker whose lease looks expired commits (lease, then outbox) while another claims
    the execution (outbox, then lease): the claim passes the busy lease over. (An emptied
    database: an earlier test's unhandled wake-up would be claimable at this test's clock.)"""
    clock = [1000.0]
    engine = Engine(db_url, clock=lambda: clock[0])
    try:
        counting_app.setup(engine)
        execution_id = engine.create_execution("Counting", tenant=TENANT)
        engine.enqueue_event(execution_id, "Hit", tenant=TENANT, payload={"n": 1})
        store = engine.store
        token = store.take_lease(execution_id, "late", 5.0)
        assert token is not None
        clock[0] += 10  # the lease looks expired to everyone
        outcome: dict[str, object] = {}

        def late_commit() -> None:
            try:
                with store.write(tenant=ALL_TENANTS) as conn:
                    store.fence(conn, execution_id, "late", token, 5.0)
                    time.sleep(0.5)  # the claim runs meanwhile
                    store.mark_handled(conn, execution_id)
                outcome["late"] = "committed"
            except Exception as exc:
                outcome["late"] = repr(exc)

        def claim() -> None:
            time.sleep(0.2)
            try:
                outcome["claim"] = store.claim("other", 5.0)
            except Exception as exc:
                outcome["claim"] = repr(exc)

        threads = [threading.Thread(target=late_commit), threading.Thread(target=claim)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert outcome == {"late": "committed", "claim": None}
    finally:
        engine.close()
