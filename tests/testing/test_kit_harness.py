"""The harness: a real engine on a throwaway store, a clock that moves when told, every
action call recorded, and faults injected by the real mechanisms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import ledgerflow
from ledgerflow import Engine, EventReceived, StepFailed, StepSucceeded
from ledgerflow.errors import LeaseLostError
from ledgerflow.model import State, Status
from ledgerflow.registry import ActionContext, ActionRegistry, Isolation
from ledgerflow.store import ALL_TENANTS
from ledgerflow.testing import (
    Clock,
    Crash,
    Harness,
    LeaseExpires,
    SimulatedCrash,
    render_ledger,
)
from ledgerflow.testing.harness import _Serving
from testing.kit_workflows import actions, expense

# a database action that writes one row per call, in its own transaction, to count effects
effects_table = sa.Table(
    "kit_effects",
    sa.MetaData(),
    sa.Column("key", sa.String(300), primary_key=True),
    sa.Column("amount", sa.Float, nullable=False),
)


def write_effect(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    assert ctx.connection is not None
    ctx.connection.execute(effects_table.insert().values(key=ctx.idempotency_key, amount=1))
    return {"written": params["amount"]}


def with_database_action(engine: Engine) -> None:
    """A setup(engine): the table, and ``note`` as a database action."""
    effects_table.create(engine.store.engine, checkfirst=True)
    if "note" not in engine.registry:
        engine.registry.register_database_action(
            "note",
            "Write a row.",
            [{"name": "amount", "type": "number"}],
            Isolation.SERIALIZABLE,
            write_effect,
        )


def rows(harness: Harness) -> int:
    with harness.store.read(tenant=ALL_TENANTS) as conn:
        return int(conn.scalar(sa.select(sa.func.count()).select_from(effects_table)) or 0)


@pytest.fixture
def harness() -> Any:
    with Harness(expense(), actions=actions()) as harness:
        yield harness


def test_the_clock_moves_only_when_told() -> None:
    clock = Clock(start=100.0)
    assert clock() == clock.now == 100.0
    assert clock.advance(5) == 105.0
    clock.sleep(2.5)
    assert clock() == 107.5
    with pytest.raises(ValueError, match="only moves forward"):
        clock.advance(-1)


def test_events_are_processed_inline_and_every_call_is_recorded(harness: Harness) -> None:
    x = harness.start()
    harness.send(x, "Submit", {"amount": 40}, role="employee")
    harness.send(x, "Approve", role="manager")
    assert harness.execution(x).state == "approved"
    assert harness.state(x).status is Status.COMPLETED
    assert [(c.step_id, c.outcome, c.recorded, c.result) for c in harness.calls] == [
        ("log", "returned", True, {"amount": 40}),
        ("pay", "returned", True, {"amount": 40}),
        ("tell", "returned", True, {"amount": 0}),
    ]
    assert sorted(k.rsplit(":", 1)[1] for k in harness.results(x)) == ["log", "pay", "tell"]
    harness.check(x)


def test_the_store_and_the_steps_use_the_harness_clock(harness: Harness) -> None:
    x = harness.start()
    harness.advance(3600)
    harness.send(x, "Submit", {"amount": 1}, role="employee")
    [step] = [r for r in harness.ledger(x) if isinstance(r, StepSucceeded)]
    assert step.started_at == harness.clock.now
    assert harness.history(x)[-1].created_at == harness.clock.now


def test_a_crash_before_an_effect_is_recovered_without_running_recorded_steps(
    harness: Harness,
) -> None:
    x = harness.start()
    harness.send(x, "Submit", {"amount": 5}, role="employee")
    harness.arm(Crash(point="before_effect", call=2))
    with pytest.raises(SimulatedCrash, match="before the effect of action call 2"):
        harness.send(x, "Approve", role="manager")
    assert [e.record.kind for e in harness.pending(x)] == ["event_received"]
    assert harness.execution(x).state == "submitted"  # nothing of the event committed
    harness.recover()
    assert harness.execution(x).state == "approved"
    # call 2 is tell: pay's result was recorded before the crash, so pay is not run again
    calls = [(c.step_id, c.outcome, c.worker) for c in harness.calls]
    assert calls == [
        ("log", "returned", 1),
        ("pay", "returned", 1),
        ("tell", "crashed", 1),
        ("tell", "returned", 2),
    ]
    harness.check(x)


def test_a_crash_after_a_simple_actions_effect_runs_it_again(harness: Harness) -> None:
    x = harness.start()
    harness.arm(Crash(point="after_effect", call=1))
    with pytest.raises(SimulatedCrash):
        harness.send(x, "Submit", {"amount": 5}, role="employee")
    harness.recover()
    assert [(c.outcome, c.recorded) for c in harness.calls] == [
        ("crashed", False),
        ("returned", True),
    ]
    assert harness.faults[0][1] == "note, step log"
    harness.check(x)


def test_a_crash_after_a_database_actions_effect_leaves_it_once() -> None:
    with Harness(expense(), setup=with_database_action) as harness:
        x = harness.start()
        harness.arm(Crash(point="after_effect", call=1))
        with pytest.raises(SimulatedCrash):
            harness.send(x, "Submit", {"amount": 5}, role="employee")
        assert rows(harness) == 0  # rolled back with the dying worker's transaction
        harness.recover()
        assert rows(harness) == 1
        assert harness.execution(x).state == "submitted"
        harness.check(x)


def test_an_expired_lease_is_taken_over_and_the_stalled_worker_writes_nothing(
    harness: Harness,
) -> None:
    x = harness.start()
    harness.send(x, "Submit", {"amount": 5}, role="employee")
    before = harness.clock.now
    harness.arm(LeaseExpires(call=1))
    with pytest.raises(SimulatedCrash, match="lease was taken over"):
        harness.send(x, "Approve", role="manager")
    assert harness.clock.now > before + harness.lease_ttl
    assert harness.execution(x).state == "submitted"
    harness.recover()
    assert harness.execution(x).state == "approved"
    # tell ran in the stalled worker (its record was refused) and again after the takeover
    assert [(c.step_id, c.recorded) for c in harness.calls if c.step_id == "tell"] == [
        ("tell", False),
        ("tell", True),
    ]
    harness.check(x)


def test_a_fault_that_is_not_reached_does_nothing(harness: Harness) -> None:
    x = harness.start()
    harness.arm(Crash(point="before_effect", call=5))
    harness.send(x, "Submit", {"amount": 5}, role="employee")
    assert harness.disarm() == Crash(point="before_effect", call=5)
    assert harness.faults == []


def test_a_redelivered_wake_up_and_a_restart_change_nothing(harness: Harness) -> None:
    x = harness.start()
    harness.send(x, "Submit", {"amount": 5}, role="employee")
    ledger = harness.ledger(x)
    assert harness.redeliver(x) == 0
    first = harness.engine
    assert harness.restart() is harness.engine is not first
    assert harness.redeliver(x) == 0
    assert harness.ledger(x) == ledger
    assert len(harness.calls) == 1


def test_a_clients_retry_with_its_key_appends_nothing(harness: Harness) -> None:
    x = harness.start()
    first = harness.send(x, "Submit", {"amount": 5}, role="employee", key="k")
    assert harness.send(x, "Submit", {"amount": 5}, role="employee", key="k") == first
    assert [r.kind for r in harness.ledger(x)].count("event_received") == 1


def test_a_broken_projection_is_caught_by_check(harness: Harness) -> None:
    x = harness.start()
    harness.send(x, "Submit", {"amount": 5}, role="employee")
    found = harness.execution(x)
    wrong = State(
        workflow=found.workflow,
        version=found.version,
        name="approved",
        context=found.context,
        status=Status.ACTIVE,
        seq=found.seq,
        decided_seq=found.decided_seq,
    )
    with harness.store.write(tenant=ALL_TENANTS) as conn:
        harness.store.save_projection(conn, x, wrong)
    with pytest.raises(AssertionError, match="is not the state replayed from the ledger"):
        harness.check(x)


def test_a_real_worker_processes_on_a_file_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ledger.db"
    with Harness(expense(), actions=actions(), url=url, worker=True) as harness:
        x = harness.start()
        harness.send(x, "Submit", {"amount": 500}, role="employee")
        harness.send(x, "Approve", role="manager")  # over the limit: rejected
        harness.send(x, "Reject", role="manager")
        assert harness.execution(x).state == "rejected"
        harness.check(x)


def test_an_in_memory_store_cannot_serve_a_real_worker() -> None:
    with Harness(expense(), actions=actions(), worker=True) as harness:
        x = harness.start()
        with pytest.raises(ValueError, match="in-memory SQLite"):
            harness.send(x, "Submit", {"amount": 1}, role="employee")


def test_a_failing_action_is_data_not_a_crash() -> None:
    registry = ActionRegistry()

    def broken(params: dict[str, Any], ctx: ActionContext) -> None:
        raise RuntimeError("the service said no")

    registry.register_simple_action(
        "note", "Fails.", [{"name": "amount", "type": "number"}], broken
    )
    with Harness(expense(), actions=registry) as harness:
        x = harness.start()
        harness.send(x, "Submit", {"amount": 1}, role="employee")
        assert harness.execution(x).status is Status.FAILED
        [failed] = [r for r in harness.ledger(x) if isinstance(r, StepFailed)]
        assert "the service said no" in failed.error
        assert [c.outcome for c in harness.calls] == ["raised"]
        harness.check(x)


def test_the_ledger_reads_as_lines(harness: Harness) -> None:
    x = harness.start(context={"team": "a"})
    harness.send(x, "Submit", {"amount": 500}, role="employee")
    harness.send(x, "Approve", role="manager")
    text = harness.render(x)
    assert text.splitlines()[1:] == [
        '   1  started    Expense v1, context {"team": "a"}',
        '   2  event      Submit by employee {"amount": 500}',
        "   3  applied    submit: draft -> submitted; context amount=500",
        '   4  step ok    log -> {"amount": 500}',
        "   5  event      Approve by manager {}",
        "   6  rejected   event 5: condition_false: transition approve: condition "
        "'context.amount <= 100' is false",
    ]
    assert render_ledger(harness.ledger(x)[:1]) == text.splitlines()[1]


def test_a_lease_lost_without_a_fault_is_not_hidden(harness: Harness) -> None:
    x = harness.start()
    harness.send(x, "Submit", {"amount": 5}, role="employee", process=False)
    owner = "someone-else"
    token = harness.store.take_lease(x, owner, 30)
    assert token is not None
    assert harness.process() == 0  # held by another worker: left for later
    harness.advance(31)
    assert harness.process() == 1
    with pytest.raises(LeaseLostError), harness.store.write(tenant=ALL_TENANTS) as conn:
        harness.store.fence(conn, x, owner, token, 30)


TIMED = """
name: Timed
version: 1
initial_state: waiting
states: [waiting, done, expired]
terminal_states: [done, expired]
events:
  Done: {}
  Expire: {}
transitions:
  - {name: finish, from: waiting, to: done, on: Done}
  - {name: expire, from: waiting, to: expired, on: Expire, after: 10s}
"""


def kinds(harness: Harness, x: str) -> list[tuple[str, str | None]]:
    return [(r.kind, r.name if isinstance(r, EventReceived) else None) for r in harness.ledger(x)]


def test_told_where_the_work_is_the_harness_still_fires_a_timer_due_first() -> None:
    # check_workflow tells the harness which execution it just sent an event to, so that the
    # processing skips its first look for work; once the clock has moved, a timer may be due
    # and the harness looks anyway: the timer fires before the event is processed, as with
    # process() (its event comes too late and is rejected), rather than being cancelled by the
    # transition the event takes
    timed = ledgerflow.loads(TIMED, "yaml")
    ledgers = []
    for told in (False, True):
        with Harness(timed) as harness:
            x = harness.start()
            harness.process()
            harness.advance(10)
            harness.send(x, "Done", process=False)
            if told:
                harness._process([x])
            else:
                harness.process()
            assert harness.execution(x).state == "done"
            ledgers.append(kinds(harness, x))
            harness.check(x)
    assert ledgers[0] == ledgers[1]
    assert ("event_received", "Expire") in ledgers[1]


def test_told_where_the_work_is_with_no_time_passed_the_harness_processes_it() -> None:
    timed = ledgerflow.loads(TIMED, "yaml")
    with Harness(timed) as harness:
        x = harness.start()
        harness.process()
        harness.send(x, "Done", process=False)
        processed, look = harness._process([x], look=x)
        assert processed == 1
        assert look is not None
        assert look.projection.state == "done"
        assert [k for k, _ in kinds(harness, x)] == [
            "execution_started",
            "event_received",
            "transition_applied",
        ]
        harness._check(look)


def test_the_harness_looks_for_work_as_the_store_finds_it() -> None:
    # the harness asks for a timer due and for pending executions in one transaction of its
    # own; it must find what the store's due_timers and pending_executions (a worker's poll)
    # find, or it would fire timers or process executions a worker would not, or miss them
    timed = ledgerflow.loads(TIMED, "yaml")
    with Harness(timed) as harness:

        def agree() -> tuple[bool, list[tuple[str, str]]]:
            poll = harness._poll(_Serving(first=len(harness.calls)))
            due = bool(harness.store.due_timers(harness.clock(), 100))
            assert poll.due == due
            if not poll.due:
                assert sorted(poll.found) == sorted(harness.store.pending_executions(64))
            return poll.due, poll.found

        x = harness.start()
        assert agree() == (False, [])
        harness.advance(9.99)
        assert agree() == (False, [])
        harness.advance(0.01)  # the timer is due now
        assert agree() == (True, [])
        harness.process()
        assert agree() == (False, [])
        y = harness.start()
        harness.send(y, "Done", process=False)
        assert agree() == (False, [(y, harness.tenant)])
        token = harness.store.take_lease(y, "someone-else", 30)
        assert token is not None
        assert agree() == (False, [])  # leased: not work for this worker
        harness.advance(31)
        assert agree() == (True, [])  # y's own timer is due by now: it fires first
        harness.process()
        assert agree() == (False, [])
        assert harness.execution(x).state == "expired"
        assert harness.execution(y).state == "done"
