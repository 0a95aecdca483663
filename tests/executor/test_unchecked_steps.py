"""Actions registered with ``checkpoint=False``: their results are recorded with the commit of
the event that ran them, on SQLite and PostgreSQL: nothing of theirs is recorded before that
commit, a crash or a lost lease before it runs them again, and after it they never run
again and the ledger and the recorded results agree."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

import ledgerflow
from ledgerflow import StepSucceeded
from ledgerflow.registry import ActionContext, ActionRegistry, Isolation
from ledgerflow.testing import Crash, Harness, LeaseExpires, SimulatedCrash
from support.tables import ledger_with_own_table
from testing.kit_workflows import EXPENSE, expense

WITH_A_WRITE = ledgerflow.loads(
    EXPENSE.replace(
        "      - {id: tell, action: note, depends_on: [pay], params: {amount: 0}}\n",
        "      - {id: tell, action: note, depends_on: [pay], params: {amount: 0}}\n"
        "      - {id: book, action: book, depends_on: [tell], params: {amount: 0}}\n"
        "      - {id: last, action: note, depends_on: [book], params: {amount: 1}}\n",
    ),
    "yaml",
)

booked = sa.Table(
    "unchecked_booked",
    sa.MetaData(),
    sa.Column("key", sa.String(300), primary_key=True),
)


def note(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    return dict(params)


def book(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    assert ctx.connection is not None
    ctx.connection.execute(booked.insert().values(key=ctx.idempotency_key))
    return {"booked": True}


def registry() -> ActionRegistry:
    actions = ActionRegistry()
    actions.register_simple_action(
        "note", "Note an amount.", [{"name": "amount", "type": "number"}], note, checkpoint=False
    )
    return actions


def setup(engine: ledgerflow.Engine) -> None:
    booked.create(engine.store.engine, checkfirst=True)
    if "book" not in engine.registry:
        engine.registry.register_database_action(
            "book",
            "Book it.",
            [{"name": "amount", "type": "number"}],
            Isolation.READ_COMMITTED,
            book,
        )


def emptied(harness: Harness) -> Harness:
    """``harness`` with the table of ``book`` emptied (PostgreSQL keeps it between tests)."""
    with harness.store.write() as conn:
        conn.execute(booked.delete())
    return harness


@pytest.fixture
def url(db_url: str) -> Iterator[str]:
    """An in-memory SQLite ledger, or the PostgreSQL test database, left as it was found
    (the table of ``book`` dropped)."""
    with ledger_with_own_table(db_url, booked) as url:
        yield url


def recorded(harness: Harness, x: str) -> dict[str, Any]:
    return {k.rsplit(":", 1)[1]: v for k, v in harness.results(x).items()}


def test_results_are_recorded_by_the_events_commit_and_agree_with_the_ledger(url: str) -> None:
    with Harness(WITH_A_WRITE, url=url, actions=registry(), setup=setup) as harness:
        emptied(harness)
        x = harness.start()
        harness.send(x, "Submit", {"amount": 40}, role="employee")
        harness.send(x, "Approve", role="manager")
        assert harness.execution(x).state == "approved"
        assert recorded(harness, x) == {
            "log": {"amount": 40},
            "pay": {"amount": 40},
            "tell": {"amount": 0},
            "book": {"booked": True},
            "last": {"amount": 1},
        }
        succeeded = {r.step_id: r.result for r in harness.ledger(x) if isinstance(r, StepSucceeded)}
        assert succeeded == recorded(harness, x)
        harness.check(x)


def test_a_crash_before_the_commit_runs_them_again_but_not_a_database_action(url: str) -> None:
    """pay and tell ran, book wrote and recorded its row in its own transaction, then the
    worker died before the event's commit: pay and tell run again (their results were to
    come with that commit), book does not, and the commit then records everything once."""
    with Harness(WITH_A_WRITE, url=url, actions=registry(), setup=setup) as harness:
        emptied(harness)
        x = harness.start()
        harness.send(x, "Submit", {"amount": 5}, role="employee")
        harness.arm(Crash(point="before_effect", call=4))  # last, after book committed
        with pytest.raises(SimulatedCrash):
            harness.send(x, "Approve", role="manager")
        assert harness.execution(x).state == "submitted"
        assert set(recorded(harness, x)) == {"log", "book"}  # Submit's commit, book's own
        harness.recover()
        assert harness.execution(x).state == "approved"
        calls = [(c.step_id, c.outcome) for c in harness.calls]
        assert calls == [
            ("log", "returned"),
            ("pay", "returned"),
            ("tell", "returned"),
            ("book", "returned"),
            ("last", "crashed"),
            ("pay", "returned"),
            ("tell", "returned"),
            ("last", "returned"),
        ]
        with harness.store.read() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(booked)).scalar() == 1
        assert set(recorded(harness, x)) == {"log", "pay", "tell", "book", "last"}
        harness.check(x)


def test_a_lease_lost_before_the_commit_records_nothing(url: str) -> None:
    """The worker's lease runs out after its steps: its commit is refused, with the results
    it meant to record, and the successor runs the steps and records them."""
    with Harness(expense(), url=url, actions=registry()) as harness:
        x = harness.start()
        harness.send(x, "Submit", {"amount": 5}, role="employee")
        harness.arm(LeaseExpires(call=2))  # tell
        with pytest.raises(SimulatedCrash, match="lease was taken over"):
            harness.send(x, "Approve", role="manager")
        assert set(recorded(harness, x)) == {"log"}
        harness.recover()
        assert harness.execution(x).state == "approved"
        assert [c.step_id for c in harness.calls] == ["log", "pay", "tell", "pay", "tell"]
        assert [c.recorded for c in harness.calls] == [True, False, False, True, True]
        harness.check(x)
