"""Results read ahead for an event (StepJob.recorded) never make an action run twice: a key
found there is returned, a key missing there is read again before a simple action runs (the
read-ahead may be stale: the lease can be taken over since), and a database action whose key
is missing runs in its transaction, which refuses a second result and its effect."""

from __future__ import annotations

from typing import Any

import attrs
import sqlalchemy as sa

from apps import counting_app
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

    @counting.registry.action("test.remember", additional_params=True)
    def remember(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        calls.append(ctx.idempotency_key)
        return {"n": len(calls)}

    definition = counting.definition("Counting", 1)
    transition = next(t for t in definition.transitions if t.id == "hit")
    step = attrs.evolve(transition.steps[0].step, action="test.remember")
    steps = (attrs.evolve(transition.steps[0], step=step),)
    runner = GraphRunner(counting.store, counting.registry)
    first = runner.run(hit_job(counting, "x3", steps=steps))
    again = runner.run(hit_job(counting, "x3", steps=steps, recorded={}))
    assert calls == ["x3:e1:hit"]
    assert again.outcomes[0].result == first.outcomes[0].result == {"n": 1}
