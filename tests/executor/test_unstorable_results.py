"""A result the ledger cannot hold (not JSON, NaN or infinity, a NUL character, text that is not
Unicode) fails its step at once with UnstorableResultError, the same on SQLite and PostgreSQL,
whether the action is checkpointed, not checkpointed or a database action: the event is
decided, nothing is recorded under the step's key, and a database action's writes roll back.
Before, a checkpointed result failed its own record as a store error on PostgreSQL, holding
the event back for good, and NaN was stored on SQLite."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

import ledgerflow
from ledgerflow import StepFailed
from ledgerflow.executor import GraphRunner, StepJob
from ledgerflow.registry import ActionContext, ActionRegistry, Isolation
from ledgerflow.store.sql import SQLStore
from ledgerflow.testing import Harness
from support.executions import ensure_execution
from support.tables import ledger_with_own_table
from testing.kit_workflows import expense

written = sa.Table(
    "unstorable_written",
    sa.MetaData(),
    sa.Column("key", sa.String(300), primary_key=True),
)

RESULTS = [
    (math.nan, "not JSON"),
    ({"total": math.inf}, "not JSON"),
    ({"at": object()}, "not JSON"),
    ({"text": "a\x00b"}, "NUL"),
    (["a\ud800b"], "not Unicode"),
]
RESULT_IDS = ["nan", "infinity", "object", "nul", "surrogate"]


@pytest.fixture
def url(db_url: str) -> Iterator[str]:
    """An in-memory SQLite ledger, or the PostgreSQL test database, left as it was found
    (the database action's table dropped)."""
    with ledger_with_own_table(db_url, written) as url:
        yield url


def _returning(result: Any, kind: str) -> tuple[ActionRegistry, Any]:
    """A registry whose action ``note`` (the expense workflow's first step) returns
    ``result``: a simple action, checkpointed or not, or a database action that writes a row
    first; and the setup that makes its table."""
    actions = ActionRegistry()
    param = [{"name": "amount", "type": "number"}]
    if kind != "database":
        actions.register_simple_action(
            "note", "Return something.", param, lambda p, c: result, checkpoint=kind == "simple"
        )
        return actions, None

    def write_then_return(params: dict[str, Any], ctx: ActionContext) -> Any:
        assert ctx.connection is not None
        ctx.connection.execute(written.insert().values(key=ctx.idempotency_key))
        return result

    actions.register_database_action(
        "note", "Write, then return something.", param, Isolation.READ_COMMITTED, write_then_return
    )

    def setup(engine: ledgerflow.Engine) -> None:
        written.create(engine.store.engine, checkfirst=True)
        with engine.store.write() as conn:
            conn.execute(written.delete())

    return actions, setup


@pytest.mark.parametrize("kind", ["simple", "not-checkpointed", "database"])
@pytest.mark.parametrize(("result", "problem"), RESULTS, ids=RESULT_IDS)
def test_an_unstorable_result_fails_its_step_and_the_event_is_decided(
    url: str, kind: str, result: Any, problem: str
) -> None:
    actions, setup = _returning(result, kind)
    with Harness(expense(), url=url, actions=actions, setup=setup) as harness:
        x = harness.start()
        harness.send(x, "Submit", {"amount": 5}, role="employee")
        [failed] = [r for r in harness.ledger(x) if isinstance(r, StepFailed)]
        assert failed.step_id == "log"
        assert failed.error.startswith("UnstorableResultError: action 'note' returned")
        assert problem in failed.error
        assert harness.results(x) == {}
        assert harness.pending(x) == []  # decided: the event committed, with its failure
        if kind == "database":
            with harness.store.read() as conn:
                assert conn.execute(sa.select(sa.func.count()).select_from(written)).scalar() == 0


@pytest.mark.parametrize("kind", ["simple", "not-checkpointed", "database"])
def test_an_unstorable_result_is_never_retried(tmp_path: Any, kind: str) -> None:
    """Running the action again would give the same result: the step fails at once, even
    under the retry strategy (and a database action's transaction is not tried again)."""
    calls: list[int] = []

    def bad(params: dict[str, Any], ctx: ActionContext) -> float:
        calls.append(1)
        if ctx.connection is not None:
            ctx.connection.execute(written.insert().values(key=ctx.idempotency_key))
        return math.inf

    actions = ActionRegistry()
    if kind == "database":
        actions.register_database_action("bad", "Infinity.", [], Isolation.SERIALIZABLE, bad)
    else:
        actions.register_simple_action("bad", "Infinity.", [], bad, checkpoint=kind == "simple")
    store = SQLStore(f"sqlite:///{tmp_path}/ledger.db")
    store.upgrade()
    written.create(store.engine)
    try:
        ensure_execution(store, "x1", "t")
        definition = ledgerflow.loads(
            json.dumps(
                {
                    "name": "Once",
                    "version": 1,
                    "initial_state": "a",
                    "states": ["a", "b"],
                    "terminal_states": ["b"],
                    "transitions": [
                        {
                            "from": "a",
                            "to": "b",
                            "on": "Go",
                            "steps": [
                                {
                                    "id": "s",
                                    "action": "bad",
                                    "on_error": {
                                        "strategy": "retry",
                                        "attempts": 3,
                                        "backoff": {"initial": 0, "maximum": 0},
                                    },
                                }
                            ],
                        }
                    ],
                }
            ),
            "json",
        )
        job = StepJob(
            execution_id="x1",
            tenant="t",
            event_id="e",
            steps=definition.transitions[0].steps,
            variables={"payload": {}, "context": {}, "role": None, "event": "Go", "state": "a"},
        )
        result = GraphRunner(store, actions, sleep=lambda _: None).run(job)
        with store.read() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(written)).scalar() == 0
    finally:
        store.close()
    [outcome] = result.outcomes
    assert (outcome.status, outcome.attempts, len(calls)) == ("failed", 1, 1)
    assert outcome.error.startswith("UnstorableResultError: action 'bad' returned")
    assert outcome.unrecorded is None
