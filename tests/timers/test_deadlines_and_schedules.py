"""``at`` timers (a time computed from the context when a state is entered) and events a step
schedules for later with ``ledgerflow.schedule_event``."""

from __future__ import annotations

import datetime
from collections.abc import Iterator

import pytest

from ledgerflow import definitions
from ledgerflow.engine import Engine
from ledgerflow.errors import DefinitionError, ExpressionError
from ledgerflow.expressions import as_moment
from ledgerflow.model import EventReceived, ExecutionFailed
from ledgerflow.testing import Clock
from ledgerflow.worker import Worker

TENANT = "acme"
START = datetime.datetime(2026, 3, 1, 9, 0, tzinfo=datetime.UTC)

RENEWAL = """
name: Renewal
version: 1
initial_state: active
states: [active, expired, renewed, reminded]
terminal_states: [renewed]
events:
  Renew: {}
  Expire: {}
  Remind:
    payload:
      type: object
      properties: {note: {type: string}}
      required: [note]
  Plan:
    payload:
      type: object
      properties: {wait: {type: string}}
transitions:
  - {name: renew, from: [active, expired, reminded], to: renewed, on: Renew}
  - name: expire
    from: active
    to: expired
    on: Expire
    at: 'has(context.ends) ? timestamp(context.ends) + duration("24h") : null'
  - name: plan
    from: active
    to: active
    on: Plan
    steps:
      - id: remind_later
        action: ledgerflow.schedule_event
        params:
          event: Remind
          payload: {note: {expr: "'renew soon'"}}
          after: {expr: payload.wait}
  - {name: remind, from: [active, expired], to: reminded, on: Remind}
"""


@pytest.fixture
def clock() -> Clock:
    return Clock(START.timestamp())


@pytest.fixture
def renewal(db_url: str, clock: Clock) -> Iterator[Engine]:
    engine = Engine(db_url, clock=clock)
    engine.register(definitions.loads(RENEWAL, "yaml", source="renewal.yaml"))
    yield engine
    engine.close()


def drain(engine: Engine) -> int:
    return Worker(engine, poll_interval=0.01, sweep_interval=0.0).run_once()


def received(engine: Engine, execution_id: str) -> list[EventReceived]:
    return [
        e.record
        for e in engine.history(execution_id, tenant=TENANT)
        if isinstance(e.record, EventReceived)
    ]


def test_an_at_timer_fires_at_the_time_its_expression_gives(renewal: Engine, clock: Clock) -> None:
    ends = START + datetime.timedelta(days=30)
    x = renewal.create_execution("Renewal", tenant=TENANT, context={"ends": ends.isoformat()})
    (timer,) = renewal.timers(x, tenant=TENANT)
    assert timer.due_at == (ends + datetime.timedelta(hours=24)).timestamp()
    clock.advance(timer.due_at - clock() - 1)
    drain(renewal)
    assert renewal.get_execution(x, tenant=TENANT).state == "active"
    clock.advance(1)
    drain(renewal)
    assert renewal.get_execution(x, tenant=TENANT).state == "expired"
    assert [(e.name, e.origin) for e in received(renewal, x)] == [("Expire", "timer")]


def test_an_at_expression_giving_null_arms_nothing(renewal: Engine) -> None:
    x = renewal.create_execution("Renewal", tenant=TENANT)
    assert renewal.timers(x, tenant=TENANT) == []


def test_an_at_expression_giving_no_time_arms_nothing_and_warns(
    renewal: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    x = renewal.create_execution("Renewal", tenant=TENANT, context={"ends": "next tuesday"})
    assert renewal.timers(x, tenant=TENANT) == []
    assert renewal.get_execution(x, tenant=TENANT).state == "active"
    assert "the timer for Expire is not armed" in caplog.text


def test_a_transition_cannot_have_after_and_at() -> None:
    bad = RENEWAL.replace("    on: Expire\n    at:", "    on: Expire\n    after: 1h\n    at:")
    with pytest.raises(DefinitionError, match="has both 'after' and 'at'"):
        definitions.loads(bad, "yaml")


def test_an_at_expression_is_checked_when_loading() -> None:
    bad = RENEWAL.replace("timestamp(context.ends)", "timestamp(context.ends")
    with pytest.raises(DefinitionError, match="at"):
        definitions.loads(bad, "yaml")


def test_a_step_schedules_an_event_that_fires_once_whatever_the_state(
    renewal: Engine, clock: Clock
) -> None:
    x = renewal.create_execution("Renewal", tenant=TENANT)
    renewal.enqueue_event(x, "Plan", tenant=TENANT, payload={"wait": "2h"})
    drain(renewal)
    (timer,) = renewal.timers(x, tenant=TENANT)
    assert (timer.event, timer.state, timer.due_at) == ("Remind", "armed", clock() + 7200)
    # the execution moves on; a scheduled event is not a state's timer and stays armed
    renewal.enqueue_event(x, "Expire", tenant=TENANT)
    drain(renewal)
    assert renewal.get_execution(x, tenant=TENANT).state == "expired"
    assert renewal.timers(x, tenant=TENANT)[0].state == "armed"
    clock.advance(7200)
    assert drain(renewal) >= 1
    reminders = [e for e in received(renewal, x) if e.name == "Remind"]
    assert [(e.origin, dict(e.payload)) for e in reminders] == [("timer", {"note": "renew soon"})]
    assert renewal.get_execution(x, tenant=TENANT).state == "reminded"
    clock.advance(10 * 7200)
    drain(renewal)
    assert len([e for e in received(renewal, x) if e.name == "Remind"]) == 1


def test_a_scheduled_event_is_cancelled_when_the_execution_completes(
    renewal: Engine, clock: Clock
) -> None:
    x = renewal.create_execution("Renewal", tenant=TENANT)
    renewal.enqueue_event(x, "Plan", tenant=TENANT, payload={"wait": "1h"})
    renewal.enqueue_event(x, "Renew", tenant=TENANT)
    drain(renewal)
    assert [t.state for t in renewal.timers(x, tenant=TENANT)] == ["cancelled"]
    clock.advance(3600)
    drain(renewal)
    assert [e.name for e in received(renewal, x)] == ["Plan", "Renew"]


def test_a_bad_schedule_fails_the_step_with_the_reason(renewal: Engine) -> None:
    x = renewal.create_execution("Renewal", tenant=TENANT)
    renewal.enqueue_event(x, "Plan", tenant=TENANT, payload={"wait": "soon"})
    drain(renewal)
    failed = renewal.history(x, tenant=TENANT)[-1].record
    assert isinstance(failed, ExecutionFailed)
    assert "soon" in failed.reason
    assert renewal.timers(x, tenant=TENANT) == []


def test_scheduling_needs_after_or_at_but_not_both(renewal: Engine) -> None:
    action = renewal.registry.get("ledgerflow.schedule_event")
    assert {p.name for p in action.params or ()} >= {"event", "payload", "after", "at"}
    bad = RENEWAL.replace("after: {expr: payload.wait}", "after: 1h\n          at: 5")
    renewal.register(definitions.loads(bad.replace("version: 1", "version: 2"), "yaml"))
    x = renewal.create_execution("Renewal", tenant=TENANT, version=2)
    renewal.enqueue_event(x, "Plan", tenant=TENANT, payload={})
    drain(renewal)
    failed = renewal.history(x, tenant=TENANT)[-1].record
    assert isinstance(failed, ExecutionFailed)
    assert "either 'after'" in failed.reason


@pytest.mark.parametrize("value", [1e20, 10**400, float("nan"), -1e15, True, [1], "noon"])
def test_a_value_outside_the_calendar_is_not_a_time(value: object) -> None:
    with pytest.raises(ExpressionError):
        as_moment(value)


def test_times_in_every_accepted_form(clock: Clock) -> None:
    assert as_moment(None) is None
    assert as_moment(1_700_000_000) == 1_700_000_000.0
    assert as_moment("2026-03-01T09:00:00+00:00") == START.timestamp()
    assert as_moment("2026-03-01T10:00:00+01:00") == START.timestamp()
    assert as_moment("2026-03-01T09:00:00") == START.timestamp()  # UTC unless it says
    assert as_moment(START) == START.timestamp()
