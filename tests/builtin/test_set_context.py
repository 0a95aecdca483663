"""ledgerflow.set_context: a step's values become part of the context, through the ledger."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import ledgerflow
from ledgerflow import definitions
from ledgerflow.engine import Engine
from ledgerflow.worker import Worker

WORKFLOW: dict[str, Any] = {
    "name": "Scoring",
    "version": 1,
    "initial_state": "new",
    "states": ["new", "scored", "accepted"],
    "terminal_states": ["accepted"],
    "transitions": [
        {
            "from": "new",
            "to": "scored",
            "on": "Score",
            "steps": [
                {
                    "id": "measure",
                    "action": "ledgerflow.record",
                    "params": {"score": {"expr": "payload.raw * 2"}},
                },
                {
                    "id": "keep",
                    "action": "ledgerflow.set_context",
                    "depends_on": ["measure"],
                    "params": {"score": {"expr": "steps.measure.result.score"}, "by": "scorer"},
                },
            ],
        },
        {"from": "scored", "to": "accepted", "on": "Accept", "condition": "context.score >= 10"},
    ],
}


@pytest.fixture
def scoring(db_url: str) -> Iterator[Engine]:
    engine = Engine(db_url)
    engine.register(definitions.compile_workflow(definitions.parse(WORKFLOW)))
    yield engine
    engine.close()


def test_set_context_values_reach_the_context_and_later_conditions(scoring: Engine) -> None:
    execution_id = scoring.create_execution("Scoring", tenant="acme", context={"owner": "ann"})
    scoring.enqueue_event(execution_id, "Score", tenant="acme", payload={"raw": 6})
    Worker(scoring, poll_interval=0.01).run_once()
    execution = scoring.get_execution(execution_id, tenant="acme")
    assert dict(execution.context) == {"owner": "ann", "score": 12, "by": "scorer"}
    kinds = [h.kind for h in scoring.history(execution_id, tenant="acme")]
    assert kinds[-2:] == ["step_succeeded", "context_updated"]
    replayed = scoring.replay(execution_id, tenant="acme")
    assert dict(replayed.context) == dict(execution.context)
    scoring.enqueue_event(execution_id, "Accept", tenant="acme")
    Worker(scoring, poll_interval=0.01).run_once()
    assert scoring.get_execution(execution_id, tenant="acme").status is ledgerflow.Status.COMPLETED
