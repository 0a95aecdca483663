"""Results read ahead for an event (StepJob.recorded) never make an action run twice: a key
found there is returned, a key missing there is read again before a simple action runs once
the read-ahead may be stale (past StepJob.recorded_until: the lease can have been taken over
since), and a database action whose key is missing runs in its transaction, which refuses a
second result and its effect."""

from __future__ import annotations

import time
from typing import Any

import attrs
import pytest
import sqlalchemy as sa

from apps import counting_app
from ledgerflow import definitions
from ledgerflow.engine import Engine
from ledgerflow.executor import GraphRunner, StepJob
from ledgerflow.registry import ActionContext
from ledgerflow.store import ALL_TENANTS
from support.executions import ensure_execution

TENANT = "acme"


def hits(engine: Engine) -> int:
    with engine.store.read(tenant=ALL_TENANTS) as conn:
        return int(
            conn.execute(sa.select(sa.func.count()).select_from(counting_app.hits)).scalar_one()
        )


def hit_job(engine: Engine, execution_id: str, **changes: Any) -> StepJob:
    ensure_execution(engine.store, execution_id, TENANT, "Counting")
    definition = engine.definition("Counting", 1)
    transition = next(t for t in definition.transitions if t.id == "hit")
    job = StepJob(
        execution_id=execution_id,
        tenant=TENANT,
        event_id="e1",
        steps=transition.steps,
        variables={"payload": {"n": 1}, "context": {}, "role": None, "event": "Hit"},
    )
    return attrs.evolve(job, **changes)


def test_a_recorded_result_read_ahead_is_returned_without_running(counting: Engine) -> None:
    runner = GraphRunner(counting.store, counting.registry)
    result = runner.run(hit_job(counting, "x1", recorded={"x1:e1:hit": {"from": "before"}}))
    assert result.outcomes[0].result == {"from": "before"}
    assert hits(counting) == 0


def test_a_database_action_missing_from_a_stale_read_ahead_does_not_repeat_its_effect(
    counting: Engine,
) -> None:
    runner = GraphRunner(counting.store, counting.registry)
    first = runner.run(hit_job(counting, "x2"))
    assert hits(counting) == 1
    # read ahead before the first run committed: the key is missing there
    again = runner.run(hit_job(counting, "x2", recorded={}))
    assert again.failure is None
    assert again.outcomes[0].result == first.outcomes[0].result
    assert hits(counting) == 1


def test_a_simple_action_missing_from_a_stale_read_ahead_is_not_run_again(
    counting: Engine,
) -> None:
    calls: list[str] = []
    steps = _remembering(counting, calls)
    runner = GraphRunner(counting.store, counting.registry)
    first = runner.run(hit_job(counting, "x3", steps=steps))
    again = runner.run(hit_job(counting, "x3", steps=steps, recorded={}))
    assert calls == ["x3:e1:hit"]
    assert again.outcomes[0].result == first.outcomes[0].result == {"n": 1}


def _remembering(engine: Engine, calls: list[str]) -> tuple[Any, ...]:
    """The Counting workflow's steps with its action replaced by a simple one that counts its
    runs in ``calls``."""

    @engine.registry.action("test.remember_runs", additional_params=True)
    def remember(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        calls.append(ctx.idempotency_key)
        return {"n": len(calls)}

    definition = engine.definition("Counting", 1)
    transition = next(t for t in definition.transitions if t.id == "hit")
    step = attrs.evolve(transition.steps[0].step, action="test.remember_runs")
    return (attrs.evolve(transition.steps[0], step=step),)


def _result_reads(engine: Engine) -> tuple[list[str], Any]:
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if " ".join(statement.split()).startswith("SELECT lf_action_results.result FROM"):
            statements.append(statement)

    sa.event.listen(engine.store.engine, "before_cursor_execute", seen)
    return statements, seen


@pytest.mark.parametrize("passed", ["monotonic", "store-clock"])
def test_a_read_ahead_taken_with_the_lease_is_trusted_until_its_deadline(
    counting: Engine, passed: str
) -> None:
    """Before ``recorded_until`` a simple action whose key is missing from the read-ahead runs
    without reading its key again (no one else can have recorded it: the read-ahead came with
    the lease); once either deadline has passed (the monotonic one, or the one on the store's
    clock, which leases expire by: a jump of the host's clock), the key is read, and a
    result found there is returned, not re-run."""
    calls: list[str] = []
    steps = _remembering(counting, calls)
    runner = GraphRunner(counting.store, counting.registry)
    reads, listener = _result_reads(counting)
    x = f"x4-{passed}"
    try:
        soon = (time.monotonic() + 60, counting.store.clock() + 60)
        first = runner.run(hit_job(counting, x, steps=steps, recorded={}, recorded_until=soon))
        assert calls == [f"{x}:e1:hit"]
        assert reads == []
        if passed == "monotonic":
            late = (time.monotonic() - 1, counting.store.clock() + 60)
        else:
            late = (time.monotonic() + 60, counting.store.clock() - 1)
        again = runner.run(hit_job(counting, x, steps=steps, recorded={}, recorded_until=late))
        assert calls == [f"{x}:e1:hit"]
        assert len(reads) == 1
        assert again.outcomes[0].result == first.outcomes[0].result == {"n": 1}
    finally:
        sa.event.remove(counting.store.engine, "before_cursor_execute", listener)


def test_a_worker_taking_the_lease_reads_no_simple_actions_key_again(counting: Engine) -> None:
    """take_and_process reads every result of the events it decides with the lease, once:
    its simple actions then run without a read of their own, and each runs once."""
    calls: list[str] = []
    _remembering(counting, calls)
    workflow = {
        "name": "Remembering",
        "version": 1,
        "initial_state": "open",
        "states": ["open"],
        "transitions": [
            {
                "name": "remember",
                "from": "open",
                "to": "open",
                "on": "Remember",
                "steps": [
                    {"id": "first", "action": "test.remember_runs"},
                    {"id": "second", "action": "test.remember_runs", "depends_on": ["first"]},
                ],
            }
        ],
    }
    counting.register(definitions.compile_workflow(definitions.parse(workflow)))
    x = counting.create_execution("Remembering", tenant=TENANT)
    for _ in range(3):
        counting.enqueue_event(x, "Remember", tenant=TENANT)
    reads, listener = _result_reads(counting)
    try:
        done = counting.take_and_process(x, tenant=TENANT, owner="w1", ttl=30)
    finally:
        sa.event.remove(counting.store.engine, "before_cursor_execute", listener)
    assert done == 3
    assert reads == []
    assert len(calls) == 6
    assert len(set(calls)) == 6
