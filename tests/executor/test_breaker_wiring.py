"""Circuit breakers in the executor: an open circuit fails a step without calling the action,
or holds the event back until a trial call may be made."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ledgerflow import definitions
from ledgerflow.breakers import BreakerPolicy, CircuitBreakers
from ledgerflow.engine import Engine
from ledgerflow.errors import InvalidParametersError
from ledgerflow.model import StepFailed
from ledgerflow.registry import ActionContext, ActionRegistry
from ledgerflow.worker import Worker

TENANT = "acme"
WORKFLOW: dict[str, Any] = {
    "name": "Calls",
    "version": 1,
    "initial_state": "open",
    "states": ["open"],
    "transitions": [
        {
            "from": "open",
            "to": "open",
            "on": "Call",
            "steps": [
                {"id": "call", "action": "t.remote", "on_error": {"strategy": "continue"}},
                {
                    "id": "again",
                    "action": "t.remote",
                    "depends_on": ["call"],
                    "on_error": {"strategy": "retry", "attempts": 3, "backoff": {"initial": 0.01}},
                },
            ],
        }
    ],
}


STEP = {"id": "call", "action": "t.remote", "on_error": {"strategy": "continue"}}


class Remote:
    """A dependency that is up or down."""

    def __init__(self) -> None:
        self.up = False
        self.calls = 0

    def __call__(self, params: dict[str, Any], context: ActionContext) -> str:
        self.calls += 1
        if not self.up:
            raise ConnectionError("remote is down")
        return "ok"


def engine_with(db_url: str, remote: Remote, policy: BreakerPolicy) -> Engine:
    registry = ActionRegistry()
    registry.register_simple_action("t.remote", "Calls the remote.", [], remote, breaker=policy)
    engine = Engine(db_url, registry=registry)
    engine.register(definitions.compile_workflow(definitions.parse(WORKFLOW)))
    return engine


@pytest.fixture
def remote() -> Remote:
    return Remote()


@pytest.fixture
def failing_fast(db_url: str, remote: Remote) -> Iterator[Engine]:
    engine = engine_with(db_url, remote, BreakerPolicy(failures=2, reset_after=0.3))
    yield engine
    engine.close()


@pytest.fixture
def delaying(db_url: str, remote: Remote) -> Iterator[Engine]:
    engine = engine_with(
        db_url, remote, BreakerPolicy(failures=1, reset_after=0.3, when_open="delay")
    )
    yield engine
    engine.close()


def test_an_open_circuit_fails_steps_without_calling_the_action(
    failing_fast: Engine, remote: Remote
) -> None:
    execution_id = failing_fast.create_execution("Calls", tenant=TENANT)
    failing_fast.enqueue_event(execution_id, "Call", tenant=TENANT)
    Worker(failing_fast, poll_interval=0.01).run_once()
    # "call" failed (1), and its dependent was skipped; one more failure opens the circuit
    assert remote.calls == 1
    failing_fast.enqueue_event(execution_id, "Call", tenant=TENANT)
    failing_fast.enqueue_event(execution_id, "Call", tenant=TENANT)
    Worker(failing_fast, poll_interval=0.01).run_once()
    assert remote.calls == 2  # the third call was refused by the open circuit
    failures = [
        h.record
        for h in failing_fast.history(execution_id, tenant=TENANT)
        if isinstance(h.record, StepFailed)
    ]
    assert "ConnectionError" in failures[1].error
    assert "CircuitOpenError" in failures[2].error
    assert "t.remote" in failures[2].error
    assert failing_fast.runner.breakers.state("t.remote").state == "open"  # type: ignore[attr-defined]

    time.sleep(0.35)  # past reset_after: one trial call goes ahead, and closes the circuit
    remote.up = True
    failing_fast.enqueue_event(execution_id, "Call", tenant=TENANT)
    Worker(failing_fast, poll_interval=0.01).run_once()
    assert remote.calls == 4  # the trial, then the dependent step
    assert failing_fast.runner.breakers.state("t.remote").state == "closed"  # type: ignore[attr-defined]
    assert failing_fast.get_execution(execution_id, tenant=TENANT).status.value == "active"


def test_a_delaying_circuit_holds_the_event_back_until_a_trial_succeeds(
    delaying: Engine, remote: Remote
) -> None:
    execution_id = delaying.create_execution("Calls", tenant=TENANT)
    delaying.enqueue_event(execution_id, "Call", tenant=TENANT)
    Worker(delaying, poll_interval=0.01).run_once()
    assert remote.calls == 1  # failed once: the circuit opened
    held = delaying.enqueue_event(execution_id, "Call", tenant=TENANT)
    worker = Worker(delaying, poll_interval=0.01)
    worker.run_once()
    assert remote.calls == 1
    assert delaying.event_status(held, tenant=TENANT).status == "pending"
    assert worker.failing == [execution_id]

    remote.up = True
    deadline = time.monotonic() + 10
    while delaying.event_status(held, tenant=TENANT).status == "pending":
        assert time.monotonic() < deadline, "the held event was never processed"
        time.sleep(0.1)
        Worker(delaying, poll_interval=0.01).run_once()
    info = delaying.event_status(held, tenant=TENANT)
    assert (info.status, info.outcome) == ("processed", "applied")
    assert remote.calls == 3
    assert [h.kind for h in delaying.history(execution_id, tenant=TENANT)].count("step_failed") == 1


def test_failures_that_trying_again_cannot_mend_do_not_count(db_url: str) -> None:
    calls: list[str] = []

    def picky(params: dict[str, Any], context: ActionContext) -> str:
        calls.append("picky")
        raise InvalidParametersError("t.remote", ["currency: 'XXX' is not supported"])

    registry = ActionRegistry()
    registry.register_simple_action(
        "t.remote", "Refuses.", [], picky, breaker=BreakerPolicy(failures=1, reset_after=60)
    )
    engine = Engine(db_url, registry=registry)
    try:
        engine.register(definitions.compile_workflow(definitions.parse(WORKFLOW)))
        execution_id = engine.create_execution("Calls", tenant=TENANT)
        for _ in range(2):
            engine.enqueue_event(execution_id, "Call", tenant=TENANT)
        Worker(engine, poll_interval=0.01).run_once()
        assert calls == ["picky", "picky"]  # the circuit never opened
        assert engine.runner.breakers.state("t.remote").state == "closed"  # type: ignore[attr-defined]
    finally:
        engine.close()


def test_a_compensation_behind_a_delaying_circuit_holds_the_event_back(db_url: str) -> None:
    undo = Remote()
    registry = ActionRegistry()
    registry.register_simple_action(
        "t.undo",
        "Undoes.",
        [],
        undo,
        breaker=BreakerPolicy(failures=1, reset_after=60, when_open="delay"),
    )
    registry.register_simple_action("t.ok", "Works.", [], lambda p, c: "ok")

    def down(params: dict[str, Any], context: ActionContext) -> str:
        raise ConnectionError("payments down")

    registry.register_simple_action("t.down", "Fails.", [], down)
    workflow: dict[str, Any] = {
        "name": "Undo",
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
                    {"id": "one", "action": "t.ok", "compensate": {"action": "t.undo"}},
                    {
                        "id": "two",
                        "action": "t.down",
                        "depends_on": ["one"],
                        "on_error": {"strategy": "compensate"},
                    },
                ],
            }
        ],
    }
    engine = Engine(db_url, registry=registry)
    try:
        engine.register(definitions.compile_workflow(definitions.parse(workflow)))
        CircuitBreakers(engine.store).failure("t.undo", BreakerPolicy(failures=1), "down")
        execution_id = engine.create_execution("Undo", tenant=TENANT)
        event = engine.enqueue_event(execution_id, "Go", tenant=TENANT)
        worker = Worker(engine, poll_interval=0.01)
        worker.run_once()
        assert undo.calls == 0
        assert engine.event_status(event, tenant=TENANT).status == "pending"
        assert engine.get_execution(execution_id, tenant=TENANT).status.value == "active"
        assert worker.failing == [execution_id]
    finally:
        engine.close()


def test_a_trial_whose_result_cannot_be_stored_still_closes_the_circuit(db_url: str) -> None:
    """The dependency answered: the step fails (UnstorableResultError), and the circuit counts
    the call as the success it was instead of leaving the trial unanswered."""
    answers: list[Any] = [ConnectionError("remote is down"), math.nan]

    def flaky(params: dict[str, Any], context: ActionContext) -> Any:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    registry = ActionRegistry()
    registry.register_simple_action(
        "t.remote", "Answers NaN.", [], flaky, breaker=BreakerPolicy(failures=1, reset_after=0.2)
    )
    once = {**WORKFLOW, "transitions": [{**WORKFLOW["transitions"][0], "steps": [STEP]}]}
    engine = Engine(db_url, registry=registry)
    try:
        engine.register(definitions.compile_workflow(definitions.parse(once)))
        breakers = engine.runner.breakers  # type: ignore[attr-defined]
        execution_id = engine.create_execution("Calls", tenant=TENANT)
        engine.enqueue_event(execution_id, "Call", tenant=TENANT)
        Worker(engine, poll_interval=0.01).run_once()
        assert breakers.state("t.remote").state == "open"
        time.sleep(0.3)
        engine.enqueue_event(execution_id, "Call", tenant=TENANT)
        Worker(engine, poll_interval=0.01).run_once()
        assert answers == []  # the trial was made
        failed = [
            h.record
            for h in engine.history(execution_id, tenant=TENANT)
            if isinstance(h.record, StepFailed)
        ]
        assert failed[-1].error.startswith("UnstorableResultError")
        assert breakers.state("t.remote").state == "closed"
    finally:
        engine.close()
