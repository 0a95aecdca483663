"""Hypothesis: whatever events arrive, the stored ledger replays to the projection, from zero
and from every snapshot."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ledgerflow
from generated_workflows import events, workflows
from ledgerflow import Event, Workflow
from ledgerflow.engine import Engine
from ledgerflow.worker import Worker

SETTINGS = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def replay_engine(db_url: str) -> Iterator[Engine]:
    engine = Engine(db_url, snapshot_every=3)
    yield engine
    engine.close()


@SETTINGS
@given(
    workflow=workflows(), batches=st.lists(st.lists(events(), max_size=5), min_size=1, max_size=4)
)
def test_the_stored_ledger_replays_to_the_projection(
    replay_engine: Engine, workflow: Workflow, batches: list[list[Event]]
) -> None:
    engine = replay_engine
    # a name of its own, so examples never meet another example's definition
    definition = engine.register(attrs.evolve(workflow, name=f"{workflow.name}_{uuid.uuid4().hex}"))
    execution_id = engine.create_execution(definition.name, definition.version, tenant="t")
    for batch in batches:
        for event in batch:
            # an event refused up front writes nothing, as the engine tests check
            with contextlib.suppress(ledgerflow.InvalidInputError):
                engine.enqueue_event(
                    execution_id, event.name, tenant="t", role=event.role, payload=event.payload
                )
        Worker(engine, poll_interval=0.01).run_once()
    projection = engine.get_execution(execution_id, tenant="t")
    replayed = engine.replay(execution_id, tenant="t")
    assert (replayed.name, replayed.status, dict(replayed.context), replayed.seq) == (
        projection.state,
        projection.status,
        dict(projection.context),
        projection.seq,
    )
    records = [h.record for h in engine.history(execution_id, tenant="t")]
    for snapshot in engine.store.snapshot_states(execution_id, "t"):
        assert (
            ledgerflow.fold(definition, [r for r in records if r.seq > snapshot.seq], snapshot)
            == replayed
        )
    pending = [h for h in engine.history(execution_id, tenant="t") if h.status == "pending"]
    assert pending == []
