"""What an execution's state becomes when a step fails: under ``stop`` the transition stays
applied and the execution fails until a retry resumes it from the point of failure; under
``compensate`` the completed steps are undone and the transition is reverted in the ledger."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ledgerflow import definitions
from ledgerflow.engine import Engine
from ledgerflow.errors import ExecutionNotFoundError, InvalidInputError
from ledgerflow.model import (
    ExecutionFailed,
    ExecutionResumed,
    StepCompensated,
    StepFailed,
    StepSucceeded,
    TransitionReverted,
)
from ledgerflow.registry import ActionContext, ActionRegistry, Param
from ledgerflow.worker import Worker

TENANT = "acme"


def chain(on_error: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """reserve → label → charge, each undone by ``t.undo``; ``charge`` fails per ``on_error``."""
    steps: list[dict[str, Any]] = []
    previous: list[str] = []
    for name in ("reserve", "label", "charge"):
        step: dict[str, Any] = {
            "id": name,
            "action": "t.act",
            "params": {"name": name},
            "depends_on": previous,
            "compensate": {"action": "t.undo", "params": {"name": name}},
        }
        if name == "charge" and on_error:
            step["on_error"] = on_error
        steps.append(step)
        previous = [name]
    return steps


WORKFLOW: dict[str, Any] = {
    "name": "Shipping",
    "version": 1,
    "initial_state": "new",
    "states": ["new", "packed", "done"],
    "terminal_states": ["done"],
    "transitions": [
        {
            "name": "pack",
            "from": "new",
            "to": "packed",
            "on": "Pack",
            "set": {"packed_by": {"expr": "payload.by"}},
            "steps": chain(),
        },
        {
            "name": "pack_safely",
            "from": "new",
            "to": "packed",
            "on": "PackSafely",
            "set": {"packed_by": {"expr": "payload.by"}},
            "steps": chain({"strategy": "compensate"}),
        },
        {
            "name": "finish",
            "from": "packed",
            "to": "done",
            "on": "Finish",
            "steps": [{"id": "close", "action": "t.act", "params": {"name": "close"}}],
        },
        {
            "name": "flaky",
            "from": "packed",
            "to": "packed",
            "on": "Poke",
            "steps": [
                {
                    "id": "poke",
                    "action": "t.flaky",
                    "params": {"failures": 2},
                    "on_error": {"strategy": "retry", "attempts": 3, "backoff": {"initial": 0.01}},
                }
            ],
        },
    ],
}


class Behaviour:
    """What the test's actions did, and which of them are to fail."""

    def __init__(self) -> None:
        self.failing: set[str] = set()
        self.calls: list[str] = []
        self.pokes = 0
        self.lock = threading.Lock()

    def act(self, params: dict[str, Any], context: ActionContext) -> dict[str, Any]:
        with self.lock:
            self.calls.append(params["name"])
        if params["name"] in self.failing:
            raise RuntimeError(f"{params['name']} is down")
        return {"done": params["name"]}

    def undo(self, params: dict[str, Any], context: ActionContext) -> dict[str, Any]:
        name = "undo:" + params["name"]
        with self.lock:
            self.calls.append(name)
        if name in self.failing:
            raise RuntimeError(f"{name} is down")
        return {"undone": params["name"]}

    def flaky(self, params: dict[str, Any], context: ActionContext) -> int:
        self.pokes += 1
        if self.pokes <= params["failures"]:
            raise ConnectionError(f"attempt {self.pokes} refused")
        return self.pokes


@pytest.fixture
def behaviour() -> Behaviour:
    return Behaviour()


@pytest.fixture
def shipping(db_url: str, behaviour: Behaviour) -> Iterator[Engine]:
    registry = ActionRegistry()
    name = Param(name="name", type="string")
    registry.register_simple_action("t.act", "Does a named thing.", [name], behaviour.act)
    registry.register_simple_action("t.undo", "Undoes a named thing.", [name], behaviour.undo)
    registry.register_simple_action(
        "t.flaky", "Fails a few times.", [Param(name="failures", type="integer")], behaviour.flaky
    )
    engine = Engine(db_url, registry=registry)
    engine.register(definitions.compile_workflow(definitions.parse(WORKFLOW)))
    yield engine
    engine.close()


def drain(engine: Engine) -> None:
    Worker(engine, poll_interval=0.01).run_once()


def kinds_after(engine: Engine, execution_id: str, seq: int) -> list[tuple[str, str]]:
    return [
        (h.kind, getattr(h.record, "step_id", ""))
        for h in engine.history(execution_id, tenant=TENANT)
        if h.seq > seq
    ]


def assert_replays(engine: Engine, execution_id: str) -> None:
    execution = engine.get_execution(execution_id, tenant=TENANT)
    replayed = engine.replay(execution_id, tenant=TENANT)
    assert (replayed.name, replayed.status, dict(replayed.context), replayed.seq) == (
        execution.state,
        execution.status,
        dict(execution.context),
        execution.seq,
    )


def test_a_stopped_failure_keeps_the_transition_and_a_retry_resumes_at_the_failed_step(
    shipping: Engine, behaviour: Behaviour
) -> None:
    execution_id = shipping.create_execution("Shipping", tenant=TENANT)
    behaviour.failing = {"charge"}
    pack = shipping.enqueue_event(execution_id, "Pack", tenant=TENANT, payload={"by": "ann"})
    drain(shipping)
    execution = shipping.get_execution(execution_id, tenant=TENANT)
    assert (execution.state, execution.status.value) == ("packed", "failed")
    assert execution.context["packed_by"] == "ann"
    info = shipping.event_status(pack, tenant=TENANT)
    assert (info.status, info.outcome) == ("failed", "failed")
    assert "charge" in (info.detail or "")
    assert kinds_after(shipping, execution_id, 2) == [
        ("transition_applied", ""),
        ("step_succeeded", "reserve"),
        ("step_succeeded", "label"),
        ("step_failed", "charge"),
        ("execution_failed", ""),
    ]

    # while failed, events are rejected, not held
    poke = shipping.enqueue_event(execution_id, "Finish", tenant=TENANT)
    drain(shipping)
    assert shipping.event_status(poke, tenant=TENANT).outcome == "execution_finished"

    behaviour.failing = set()
    seq_before = shipping.get_execution(execution_id, tenant=TENANT).seq
    retry = shipping.retry(execution_id, tenant=TENANT, requested_by="ops")
    drain(shipping)
    assert behaviour.calls == ["reserve", "label", "charge", "charge"]  # recorded ones not re-run
    execution = shipping.get_execution(execution_id, tenant=TENANT)
    assert (execution.state, execution.status.value) == ("packed", "active")
    assert kinds_after(shipping, execution_id, seq_before) == [
        ("event_received", ""),
        ("execution_resumed", ""),
        ("step_succeeded", "charge"),
    ]
    resumed = next(
        h.record
        for h in shipping.history(execution_id, tenant=TENANT)
        if isinstance(h.record, ExecutionResumed)
    )
    assert (resumed.retried_seq, resumed.requested_by) == (2, "ops")
    info = shipping.event_status(pack, tenant=TENANT)
    assert (info.status, info.outcome) == ("processed", "applied")
    info = shipping.event_status(retry, tenant=TENANT)
    assert (info.status, info.outcome) == ("processed", "retried")
    assert_replays(shipping, execution_id)

    with pytest.raises(InvalidInputError, match="active, not failed"):
        shipping.retry(execution_id, tenant=TENANT)
    shipping.enqueue_event(execution_id, "Finish", tenant=TENANT)
    drain(shipping)
    assert shipping.get_execution(execution_id, tenant=TENANT).status.value == "completed"


def test_a_retry_that_fails_again_leaves_the_execution_failed_and_retryable(
    shipping: Engine, behaviour: Behaviour
) -> None:
    execution_id = shipping.create_execution("Shipping", tenant=TENANT)
    behaviour.failing = {"charge"}
    shipping.enqueue_event(execution_id, "Pack", tenant=TENANT, payload={"by": "ann"})
    drain(shipping)
    first = shipping.retry(execution_id, tenant=TENANT)
    assert shipping.retry(execution_id, tenant=TENANT) == first  # asked twice: one retry
    drain(shipping)
    execution = shipping.get_execution(execution_id, tenant=TENANT)
    assert execution.status.value == "failed"
    info = shipping.event_status(first, tenant=TENANT)
    assert (info.status, info.outcome) == ("failed", "retried")
    failures = [
        h.record
        for h in shipping.history(execution_id, tenant=TENANT)
        if isinstance(h.record, ExecutionFailed)
    ]
    assert len(failures) == 2
    assert all(f.event_seq == 2 for f in failures)

    behaviour.failing = set()
    second = shipping.retry(execution_id, tenant=TENANT)
    assert second != first
    drain(shipping)
    assert behaviour.calls == ["reserve", "label", "charge", "charge", "charge"]
    assert shipping.get_execution(execution_id, tenant=TENANT).status.value == "active"
    assert_replays(shipping, execution_id)


def test_a_failure_on_the_way_to_a_terminal_state_completes_after_the_retry(
    shipping: Engine, behaviour: Behaviour
) -> None:
    execution_id = shipping.create_execution("Shipping", tenant=TENANT)
    shipping.enqueue_event(execution_id, "Pack", tenant=TENANT, payload={"by": "ann"})
    drain(shipping)
    behaviour.failing = {"close"}
    shipping.enqueue_event(execution_id, "Finish", tenant=TENANT)
    drain(shipping)
    execution = shipping.get_execution(execution_id, tenant=TENANT)
    assert (execution.state, execution.status.value) == ("done", "failed")
    behaviour.failing = set()
    shipping.retry(execution_id, tenant=TENANT)
    drain(shipping)
    execution = shipping.get_execution(execution_id, tenant=TENANT)
    assert (execution.state, execution.status.value) == ("done", "completed")
    assert_replays(shipping, execution_id)


def test_compensation_undoes_the_steps_newest_first_and_reverts_the_transition(
    shipping: Engine, behaviour: Behaviour
) -> None:
    execution_id = shipping.create_execution("Shipping", tenant=TENANT, context={"n": 1})
    behaviour.failing = {"charge"}
    event = shipping.enqueue_event(execution_id, "PackSafely", tenant=TENANT, payload={"by": "ann"})
    drain(shipping)
    assert behaviour.calls == ["reserve", "label", "charge", "undo:label", "undo:reserve"]
    execution = shipping.get_execution(execution_id, tenant=TENANT)
    assert (execution.state, execution.status.value) == ("new", "active")
    assert dict(execution.context) == {"n": 1}  # the transition's assignments are undone too
    info = shipping.event_status(event, tenant=TENANT)
    assert (info.status, info.outcome) == ("failed", "compensated")
    assert kinds_after(shipping, execution_id, 2) == [
        ("transition_applied", ""),
        ("step_succeeded", "reserve"),
        ("step_succeeded", "label"),
        ("step_failed", "charge"),
        ("step_compensated", "label"),
        ("step_compensated", "reserve"),
        ("transition_reverted", ""),
    ]
    reverted = shipping.history(execution_id, tenant=TENANT)[-1].record
    assert isinstance(reverted, TransitionReverted)
    assert (reverted.source, reverted.target, reverted.transition) == (
        "packed",
        "new",
        "pack_safely",
    )
    assert_replays(shipping, execution_id)
    with pytest.raises(InvalidInputError, match="not failed"):
        shipping.retry(execution_id, tenant=TENANT)

    # the execution goes on: the same event sent again is a new event with new keys
    behaviour.failing = set()
    shipping.enqueue_event(execution_id, "PackSafely", tenant=TENANT, payload={"by": "bob"})
    drain(shipping)
    execution = shipping.get_execution(execution_id, tenant=TENANT)
    assert (execution.state, execution.context["packed_by"]) == ("packed", "bob")
    assert behaviour.calls[-3:] == ["reserve", "label", "charge"]


def test_a_failed_compensation_fails_the_execution_and_a_retry_finishes_the_undoing(
    shipping: Engine, behaviour: Behaviour
) -> None:
    execution_id = shipping.create_execution("Shipping", tenant=TENANT)
    behaviour.failing = {"charge", "undo:reserve"}
    event = shipping.enqueue_event(execution_id, "PackSafely", tenant=TENANT, payload={"by": "ann"})
    drain(shipping)
    execution = shipping.get_execution(execution_id, tenant=TENANT)
    assert (execution.state, execution.status.value) == ("packed", "failed")
    history = shipping.history(execution_id, tenant=TENANT)
    failed = history[-1].record
    assert isinstance(failed, ExecutionFailed)
    assert failed.compensating
    assert "reserve" in failed.reason
    assert shipping.event_status(event, tenant=TENANT).outcome == "failed"

    behaviour.failing = {"charge"}  # still down: a compensation retry must not call it
    shipping.retry(execution_id, tenant=TENANT)
    drain(shipping)
    assert behaviour.calls == [
        "reserve",
        "label",
        "charge",
        "undo:label",
        "undo:reserve",
        "undo:reserve",
    ]
    execution = shipping.get_execution(execution_id, tenant=TENANT)
    assert (execution.state, execution.status.value) == ("new", "active")
    assert "packed_by" not in execution.context
    tail = [h.record for h in shipping.history(execution_id, tenant=TENANT)][-3:]
    assert isinstance(tail[0], ExecutionResumed)
    assert isinstance(tail[1], StepCompensated)
    assert tail[1].step_id == "reserve"
    assert isinstance(tail[2], TransitionReverted)
    info = shipping.event_status(event, tenant=TENANT)
    assert (info.status, info.outcome) == ("failed", "compensated")
    assert info.detail == "step 'charge' failed: RuntimeError: charge is down"  # the cause
    retry_info = [
        h for h in shipping.history(execution_id, tenant=TENANT) if h.kind == "event_received"
    ][-1]
    assert (retry_info.status, retry_info.outcome) == ("processed", "retried")
    assert_replays(shipping, execution_id)


def test_step_records_carry_attempts_start_and_duration(
    shipping: Engine, behaviour: Behaviour
) -> None:
    execution_id = shipping.create_execution("Shipping", tenant=TENANT)
    shipping.enqueue_event(execution_id, "Pack", tenant=TENANT, payload={"by": "ann"})
    drain(shipping)
    before = time.time()
    shipping.enqueue_event(execution_id, "Poke", tenant=TENANT)
    drain(shipping)
    after = time.time()
    poke = shipping.history(execution_id, tenant=TENANT)[-1].record
    assert isinstance(poke, StepSucceeded)
    assert (poke.step_id, poke.result, poke.attempts) == ("poke", 3, 3)
    assert before <= poke.started_at <= after
    assert 0.01 <= poke.duration <= after - before  # two backoff waits of at least 5 ms
    for h in shipping.history(execution_id, tenant=TENANT):
        if isinstance(h.record, StepSucceeded | StepFailed):
            assert h.record.started_at > 0
            assert h.record.duration >= 0


def test_retry_refuses_what_it_cannot_resume(shipping: Engine, behaviour: Behaviour) -> None:
    execution_id = shipping.create_execution("Shipping", tenant=TENANT)
    with pytest.raises(InvalidInputError, match="active, not failed"):
        shipping.retry(execution_id, tenant=TENANT)
    behaviour.failing = {"reserve"}
    shipping.enqueue_event(execution_id, "Pack", tenant=TENANT, payload={"by": "ann"})
    drain(shipping)
    with pytest.raises(ExecutionNotFoundError):
        shipping.retry(execution_id, tenant="globex")
    with pytest.raises(ExecutionNotFoundError):
        shipping.retry("no-such-execution", tenant=TENANT)
    with pytest.raises(InvalidInputError, match="tenant"):
        shipping.retry(execution_id, tenant="")
    with pytest.raises(InvalidInputError, match="requested_by"):
        shipping.retry(execution_id, tenant=TENANT, requested_by=7)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="ledgerflow's own"):
        shipping.enqueue_event(execution_id, "Pack", tenant=TENANT, key="ledgerflow.retry:1")
    assert shipping.get_execution(execution_id, tenant=TENANT).status.value == "failed"
