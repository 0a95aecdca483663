"""A property over random interleavings of clock advances and events: a timer fires only
after its execution stayed its whole duration in the state that armed it, never twice, and
never fails to fire once it is due and a worker runs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledgerflow import definitions
from ledgerflow.engine import Engine
from ledgerflow.model import EventReceived
from ledgerflow.worker import Worker

TENANT = "acme"
HOUR = 3600.0

NAGGING = """
name: Nagging
version: 1
initial_state: waiting
states: [waiting, timed_out, done]
terminal_states: [done]
events: {Poke: {}, Finish: {}, TimedOut: {}}
transitions:
  - {name: poke, from: waiting, to: waiting, on: Poke}
  - {name: finish, from: [waiting, timed_out], to: done, on: Finish}
  - {name: time_out, from: waiting, to: timed_out, on: TimedOut, after: 1h}
  - {name: retry_later, from: timed_out, to: waiting, on: Poke}
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def nagging(db_url: str) -> Iterator[tuple[Engine, Clock]]:
    clock = Clock()
    engine = Engine(db_url, clock=clock, snapshot_every=3)
    engine.register(definitions.loads(NAGGING, "yaml", source="nagging.yaml"))
    yield engine, clock
    engine.close()


steps = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.sampled_from([0.0, 1.0, 600.0, 1800.0, HOUR - 1, HOUR])),
        st.tuples(st.just("send"), st.sampled_from(["Poke", "Finish"])),
    ),
    max_size=10,
)


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=steps)
def test_timers_fire_once_after_a_whole_stay(
    nagging: tuple[Engine, Clock], steps: list[tuple[str, object]]
) -> None:
    engine, clock = nagging
    worker = Worker(engine, poll_interval=0.01, sweep_interval=0.0)
    execution_id = engine.create_execution("Nagging", tenant=TENANT)
    state, entered = "waiting", clock()
    for kind, value in steps:
        if kind == "advance":
            assert isinstance(value, float)
            clock.now += value
            if state == "waiting" and clock() - entered >= HOUR:
                state = "timed_out"
        else:
            engine.enqueue_event(execution_id, str(value), tenant=TENANT)
            if value == "Poke" and state != "done":
                state, entered = "waiting", clock()
            elif value == "Finish" and state != "done":
                state = "done"
        worker.run_once()
        assert engine.get_execution(execution_id, tenant=TENANT).state == state
    timers = engine.timers(execution_id, tenant=TENANT)
    fired = [t for t in timers if t.state == "fired"]
    assert sum(t.state == "armed" for t in timers) == (1 if state == "waiting" else 0)
    assert all(t.fired_at is not None and t.fired_at - t.created_at >= HOUR for t in fired)
    history = engine.history(execution_id, tenant=TENANT)
    timer_events = [
        e for e in history if isinstance(e.record, EventReceived) and e.record.origin == "timer"
    ]
    assert sorted(e.event_id for e in timer_events) == sorted(str(t.fired_event_id) for t in fired)
    assert all(e.outcome == "applied" for e in timer_events)
    replayed = engine.replay(execution_id, tenant=TENANT)
    assert replayed.name == state
