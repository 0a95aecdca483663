"""Timers: a transition's ``after`` arms a timer in the ledger's database when its source state
is entered, in the transaction that enters it; leaving the state cancels it; workers fire it
once it is due, as an ordinary event with origin ``timer``, at most once per arming."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

import invoice_app
from ledgerflow import definitions
from ledgerflow.engine import Engine, Timer
from ledgerflow.model import EventReceived
from ledgerflow.store import ALL_TENANTS
from ledgerflow.worker import Worker

TENANT = "acme"
INVOICE = {"invoice": {"id": "INV-1", "total": 120, "customer_id": "C-1"}}
HOUR = 3600.0

NAGGING = """
name: Nagging
version: 1
initial_state: waiting
states: [waiting, timed_out, done]
terminal_states: [done]
events:
  Poke: {}
  Finish: {}
  TimedOut: {}
transitions:
  - {name: poke, from: waiting, to: waiting, on: Poke}
  - {name: finish, from: [waiting, timed_out], to: done, on: Finish}
  - {name: time_out, from: waiting, to: timed_out, on: TimedOut, after: 1h}
  - {name: retry_later, from: timed_out, to: waiting, on: Poke}
"""


class Clock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_engine(db_url: str, clock: Clock) -> Engine:
    engine = Engine(db_url, clock=clock, snapshot_every=4)
    invoice_app.setup(engine)
    engine.register(definitions.loads(NAGGING, "yaml", source="nagging.yaml"))
    return engine


@pytest.fixture
def timed(db_url: str, clock: Clock) -> Iterator[Engine]:
    """An engine on ``db_url`` whose store and engine read ``clock``, with InvoiceApproval
    (its tables emptied) and the Nagging workflow registered."""
    engine = make_engine(db_url, clock)
    with engine.store.write(tenant=ALL_TENANTS) as conn:
        for table in reversed(invoice_app.metadata.sorted_tables):
            conn.execute(table.delete())
    yield engine
    engine.close()


def drain(engine: Engine) -> int:
    return Worker(engine, poll_interval=0.01, sweep_interval=0.0).run_once()


def events(engine: Engine, execution_id: str, name: str) -> list[EventReceived]:
    return [
        e.record
        for e in engine.history(execution_id, tenant=TENANT)
        if isinstance(e.record, EventReceived) and e.record.name == name
    ]


def submitted(engine: Engine) -> str:
    execution_id = engine.create_execution("InvoiceApproval", tenant=TENANT)
    engine.enqueue_event(
        execution_id, "CreateInvoice", tenant=TENANT, role="clerk", payload=INVOICE
    )
    drain(engine)
    assert engine.get_execution(execution_id, tenant=TENANT).state == "pending_approval"
    return execution_id


def states(timers: list[Timer]) -> list[tuple[str, str]]:
    return [(t.event, t.state) for t in timers]


def test_the_escalation_fires_after_48_hours_and_not_before(timed: Engine, clock: Clock) -> None:
    execution_id = submitted(timed)
    (timer,) = timed.timers(execution_id, tenant=TENANT)
    assert (timer.event, timer.state, timer.due_at) == (
        "EscalationDue",
        "armed",
        clock() + 48 * HOUR,
    )
    clock.advance(48 * HOUR - 1)
    drain(timed)
    assert events(timed, execution_id, "EscalationDue") == []
    assert timed.get_execution(execution_id, tenant=TENANT).state == "pending_approval"
    clock.advance(1)
    assert drain(timed) == 1
    (fired,) = events(timed, execution_id, "EscalationDue")
    assert fired.origin == "timer"
    assert timed.get_execution(execution_id, tenant=TENANT).state == "escalated"
    (timer,) = timed.timers(execution_id, tenant=TENANT)
    assert timer.state == "fired"
    assert timer.fired_at == clock()
    entry = next(e for e in timed.history(execution_id, tenant=TENANT) if e.seq == fired.seq)
    assert timer.fired_event_id == entry.event_id
    assert (entry.status, entry.outcome) == ("processed", "applied")
    assert invoice_app.rows(timed, TENANT)["invoices"][0]["status"] == "escalated"
    # nothing fires again, however long it waits
    clock.advance(1000 * HOUR)
    assert drain(timed) == 0
    assert len(events(timed, execution_id, "EscalationDue")) == 1


def test_approving_before_48_hours_cancels_the_timer(timed: Engine, clock: Clock) -> None:
    execution_id = submitted(timed)
    clock.advance(47 * HOUR)
    timed.enqueue_event(
        execution_id, "ApproveInvoice", tenant=TENANT, role="manager", payload={"approved_by": "m"}
    )
    drain(timed)
    assert timed.get_execution(execution_id, tenant=TENANT).state == "approved"
    (timer,) = timed.timers(execution_id, tenant=TENANT)
    assert (timer.state, timer.cancelled_at, timer.fired_at) == ("cancelled", clock(), None)
    clock.advance(100 * HOUR)
    assert drain(timed) == 0
    assert timed.fire_due_timers() == 0
    assert events(timed, execution_id, "EscalationDue") == []


def test_the_initial_state_arms_its_timers_when_the_execution_is_created(
    timed: Engine, clock: Clock
) -> None:
    execution_id = timed.create_execution("Nagging", tenant=TENANT)
    (timer,) = timed.timers(execution_id, tenant=TENANT)
    assert (timer.event, timer.armed_seq, timer.due_at) == ("TimedOut", 1, clock() + HOUR)
    clock.advance(HOUR)
    drain(timed)
    assert timed.get_execution(execution_id, tenant=TENANT).state == "timed_out"


def test_a_timer_due_while_no_worker_ran_fires_once_when_one_comes_back(
    db_url: str, timed: Engine, clock: Clock
) -> None:
    execution_id = submitted(timed)
    timed.close()
    clock.advance(30 * 24 * HOUR)  # every worker down for a month
    restarted = make_engine(db_url, clock)
    try:
        assert drain(restarted) == 1
        assert drain(restarted) == 0
        assert len(events(restarted, execution_id, "EscalationDue")) == 1
        assert restarted.get_execution(execution_id, tenant=TENANT).state == "escalated"
    finally:
        restarted.close()


def test_two_workers_racing_on_due_timers_fire_each_once(
    db_url: str, timed: Engine, clock: Clock
) -> None:
    executions = [timed.create_execution("Nagging", tenant=TENANT) for _ in range(12)]
    clock.advance(2 * HOUR)
    engines = [make_engine(db_url, clock) for _ in range(3)]
    barrier = threading.Barrier(len(engines))
    fired: list[int] = []
    errors: list[BaseException] = []

    def fire(engine: Engine) -> None:
        try:
            barrier.wait()
            fired.append(engine.fire_due_timers())
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=fire, args=(e,)) for e in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(fired) == len(executions)
    # and two Worker objects, on engines of their own, find nothing left to fire
    workers = [Worker(e, poll_interval=0.01, sweep_interval=0.0) for e in engines[:2]]
    runs = [threading.Thread(target=w.run_once) for w in workers]
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    assert sum(w.stats.timers for w in workers) == 0
    for engine in engines:
        engine.close()
    for execution_id in executions:
        assert len(events(timed, execution_id, "TimedOut")) == 1
        assert timed.get_execution(execution_id, tenant=TENANT).state == "timed_out"
        assert states(timed.timers(execution_id, tenant=TENANT)) == [("TimedOut", "fired")]


def test_two_running_workers_fire_each_due_timer_once(
    db_url: str, timed: Engine, clock: Clock
) -> None:
    executions = [timed.create_execution("Nagging", tenant=TENANT) for _ in range(8)]
    clock.advance(2 * HOUR)
    engines = [make_engine(db_url, clock) for _ in range(2)]
    workers = [
        Worker(e, concurrency=2, poll_interval=0.01, sweep_interval=0.05, timer_interval=0.0)
        for e in engines
    ]
    threads = [threading.Thread(target=w.run, kwargs={"until_idle": True}) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for engine in engines:
        engine.close()
    assert sum(w.stats.timers for w in workers) == len(executions)
    for execution_id in executions:
        assert len(events(timed, execution_id, "TimedOut")) == 1
        assert timed.get_execution(execution_id, tenant=TENANT).state == "timed_out"


def test_re_entering_a_state_arms_a_new_timer(timed: Engine, clock: Clock) -> None:
    execution_id = timed.create_execution("Nagging", tenant=TENANT)
    clock.advance(50 * 60)
    timed.enqueue_event(execution_id, "Poke", tenant=TENANT)  # waiting -> waiting
    drain(timed)
    first, second = timed.timers(execution_id, tenant=TENANT)
    assert (first.state, second.state) == ("cancelled", "armed")
    assert second.due_at == clock() + HOUR
    assert second.armed_seq > first.armed_seq
    clock.advance(50 * 60)  # 100 minutes since the start, 50 since the poke
    drain(timed)
    assert timed.get_execution(execution_id, tenant=TENANT).state == "waiting"
    clock.advance(10 * 60)
    drain(timed)
    assert timed.get_execution(execution_id, tenant=TENANT).state == "timed_out"
    # leaving timed_out for waiting again arms a third timer
    timed.enqueue_event(execution_id, "Poke", tenant=TENANT)
    drain(timed)
    assert states(timed.timers(execution_id, tenant=TENANT)) == [
        ("TimedOut", "cancelled"),
        ("TimedOut", "fired"),
        ("TimedOut", "armed"),
    ]
    clock.advance(HOUR)
    drain(timed)
    assert len(events(timed, execution_id, "TimedOut")) == 2


def test_a_finished_execution_has_no_armed_timer(timed: Engine, clock: Clock) -> None:
    execution_id = timed.create_execution("Nagging", tenant=TENANT)
    timed.enqueue_event(execution_id, "Finish", tenant=TENANT)
    drain(timed)
    assert states(timed.timers(execution_id, tenant=TENANT)) == [("TimedOut", "cancelled")]
    clock.advance(10 * HOUR)
    assert timed.fire_due_timers() == 0


def test_a_timer_that_fires_after_the_state_was_left_is_rejected(
    timed: Engine, clock: Clock
) -> None:
    """The race cancellation normally prevents: the timer fired (its event appended) before
    the event that leaves the state was processed. The timer's event is then decided like any
    other, after it: no transition."""
    execution_id = timed.create_execution("Nagging", tenant=TENANT)
    timed.enqueue_event(execution_id, "Finish", tenant=TENANT)
    clock.advance(HOUR)
    assert timed.fire_due_timers() == 1
    drain(timed)
    history = timed.history(execution_id, tenant=TENANT)
    fired = next(e for e in history if getattr(e.record, "name", None) == "TimedOut")
    assert (fired.status, fired.outcome) == ("rejected", "execution_finished")
    assert timed.get_execution(execution_id, tenant=TENANT).state == "done"


def test_a_timer_event_is_trusted_for_roles_and_keyed_by_its_timer(
    timed: Engine, clock: Clock
) -> None:
    execution_id = submitted(timed)
    clock.advance(48 * HOUR)
    assert timed.fire_due_timers() == 1
    (timer,) = timed.timers(execution_id, tenant=TENANT)
    with timed.store.read(tenant=ALL_TENANTS) as conn:
        key = conn.execute(
            sa.text("SELECT client_key FROM lf_events WHERE event_id = :id"),
            {"id": timer.fired_event_id},
        ).scalar()
    assert key == f"ledgerflow.timer:{timer.id}"
    # a crash after the append but before the mark cannot append twice: the key dedupes
    with timed.store.write(tenant=ALL_TENANTS) as conn:
        conn.execute(
            sa.text("UPDATE lf_timers SET state = 'armed', fired_at = NULL WHERE id = :id"),
            {"id": timer.id},
        )
    assert timed.fire_due_timers() == 0
    assert len(events(timed, execution_id, "EscalationDue")) == 1
    assert timed.timers(execution_id, tenant=TENANT)[0].state == "fired"
    drain(timed)
    assert timed.get_execution(execution_id, tenant=TENANT).state == "escalated"


def test_replay_equals_the_projection_after_timers(timed: Engine, clock: Clock) -> None:
    execution_id = submitted(timed)
    clock.advance(48 * HOUR)
    drain(timed)
    timed.enqueue_event(
        execution_id, "ApproveInvoice", tenant=TENANT, role="director", payload={"approved_by": "d"}
    )
    drain(timed)
    projection = timed.get_execution(execution_id, tenant=TENANT)
    replayed = timed.replay(execution_id, tenant=TENANT)
    assert projection.state == replayed.name == "approved"
    assert (projection.context, projection.seq, projection.status) == (
        replayed.context,
        replayed.seq,
        replayed.status,
    )


def test_another_tenant_sees_no_timers(timed: Engine) -> None:
    from ledgerflow.errors import ExecutionNotFoundError

    execution_id = timed.create_execution("Nagging", tenant=TENANT)
    with pytest.raises(ExecutionNotFoundError):
        timed.timers(execution_id, tenant="other")
