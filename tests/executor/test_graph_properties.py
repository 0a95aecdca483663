"""Hypothesis over generated step graphs: every step runs at most once per key, never before
the steps it depends on, the outcomes say exactly what ran, and running the same job again
re-runs no recorded step."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledgerflow import definitions
from ledgerflow.executor import GraphRunner, StepJob
from ledgerflow.registry import ActionContext, ActionRegistry, Param
from ledgerflow.store.sql import SQLStore
from support.executions import ensure_execution

STRATEGIES = ["stop", "continue", "compensate", "retry"]
RUNS = itertools.count()


class Probe:
    """A real action that notes when each step ran, and fails the steps it is told to."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, float]] = []
        self.lock = threading.Lock()

    def __call__(self, params: dict[str, Any], context: ActionContext) -> dict[str, Any]:
        started = time.monotonic()
        time.sleep(0.002)
        finished = time.monotonic()
        with self.lock:
            self.calls.append((params["step"], started, finished))
        if params["fail"]:
            raise RuntimeError(f"{params['step']} fails")
        return {"step": params["step"]}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SQLStore]:
    path = Path(tmp_path_factory.mktemp("graph")) / "graph.db"
    store = SQLStore(f"sqlite:///{path}")
    store.upgrade()
    yield store
    store.close()


@st.composite
def graphs(draw: st.DrawFn) -> dict[str, Any]:
    size = draw(st.integers(1, 7))
    steps = []
    for i in range(size):
        deps = (
            draw(st.lists(st.sampled_from([f"s{j}" for j in range(i)]), unique=True, max_size=3))
            if i
            else []
        )
        strategy = draw(st.sampled_from(STRATEGIES))
        on_error: dict[str, Any] = {"strategy": strategy}
        if strategy == "retry":
            on_error |= {"attempts": 2, "backoff": {"initial": 0, "maximum": 0}}
        steps.append(
            {
                "id": f"s{i}",
                "action": "probe",
                "depends_on": deps,
                "params": {"step": f"s{i}", "fail": draw(st.booleans())},
                "on_error": on_error,
                "compensate": {"action": "undo", "params": {"step": f"s{i}"}},
            }
        )
    return {
        "name": "Graph",
        "version": 1,
        "initial_state": "a",
        "states": ["a", "b"],
        "terminal_states": ["b"],
        "transitions": [{"from": "a", "to": "b", "on": "Go", "steps": steps}],
    }


def _runner(
    store: SQLStore, probe: Probe, undone: list[str], *, checkpoint: bool = True
) -> GraphRunner:
    registry = ActionRegistry()
    registry.register_simple_action(
        "probe",
        "Note the call.",
        [Param(name="step", type="string"), Param(name="fail", type="boolean")],
        probe,
        checkpoint=checkpoint,
    )
    registry.register_simple_action(
        "undo",
        "Note the undo.",
        [Param(name="step", type="string")],
        lambda p, c: undone.append(p["step"]),
        checkpoint=checkpoint,
    )
    return GraphRunner(store, registry, max_parallel=4, sleep=lambda _: None)


def _job(store: SQLStore, graph: dict[str, Any]) -> StepJob:
    """The transition's steps of ``graph`` as a job of a new execution (its own keys)."""
    definition = definitions.compile_workflow(definitions.parse(graph))
    execution_id = f"x{next(RUNS)}"
    ensure_execution(store, execution_id, "t")
    return StepJob(
        execution_id=execution_id,
        tenant="t",
        event_id="e",
        steps=definition.transitions[0].steps,
        variables={"payload": {}, "context": {}, "role": None, "event": "Go", "state": "a"},
    )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(graph=graphs())
def test_steps_run_once_after_their_dependencies_and_are_recorded_as_they_ran(
    store: SQLStore, graph: dict[str, Any]
) -> None:
    job = _job(store, graph)
    by_id = {cs.step.id: cs.step for cs in job.steps}
    probe, undone = Probe(), []  # type: ignore[var-annotated]
    result = _runner(store, probe, undone).run(job)

    ends: dict[str, float] = {}
    for step_id, started, finished in sorted(probe.calls, key=lambda c: c[1]):
        for dep in by_id[step_id].depends_on:
            assert dep in ends, f"{step_id} ran although {dep} did not"
            assert ends[dep] <= started, f"{step_id} started before {dep} ended"
        ends[step_id] = finished
    called = [c[0] for c in probe.calls]
    for step_id in set(called):
        expected = by_id[step_id].on_error.attempts if by_id[step_id].params["fail"] else 1
        assert called.count(step_id) == expected
    succeeded = {o.step_id for o in result.outcomes if o.status == "succeeded"}
    failed = {o.step_id for o in result.outcomes if o.status == "failed"}
    assert succeeded == {s for s in set(called) if not by_id[s].params["fail"]}
    assert failed == {s for s in set(called) if by_id[s].params["fail"]}
    stopping = [s for s in failed if by_id[s].on_error.strategy != "continue"]
    assert (result.failure is not None) == bool(stopping)
    if any(by_id[s].on_error.strategy == "compensate" for s in stopping) and result.failure:
        assert sorted(undone) == sorted(succeeded)
    else:
        assert undone == []

    # the same job again, as after a crash before the outcome was committed: nothing that
    # succeeded runs again
    again = Probe()
    second = _runner(store, again, []).run(job)
    assert not ({c[0] for c in again.calls} & succeeded)
    assert {o.step_id for o in second.outcomes if o.status == "succeeded"} >= succeeded & {
        o.step_id for o in second.outcomes
    }


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(graph=graphs())
def test_results_not_checkpointed_are_left_to_the_commit_and_never_rerun_after_it(
    store: SQLStore, graph: dict[str, Any]
) -> None:
    """With ``checkpoint=False`` a step's result is not recorded by the run but handed back
    (key, result, attempts) for the event's commit: before that commit the same job runs
    those steps again, as after a crash; once the commit records them, nothing that
    succeeded runs again, and the recorded result is the outcome's."""
    job = _job(store, graph)
    execution_id = job.execution_id

    def runner(probe: Probe, undone: list[str]) -> GraphRunner:
        return _runner(store, probe, undone, checkpoint=False)

    first = runner(Probe(), []).run(job)
    keys = {
        f"{execution_id}:e:{o.step_id}" + (":compensate" if o.status == "compensated" else "")
        for o in first.outcomes
        if o.status in ("succeeded", "compensated")
    }
    assert {row["key"] for row in first.unrecorded} == keys
    for row in first.unrecorded:
        outcome = next(o for o in first.outcomes if o.unrecorded is row)
        assert row["result"] == outcome.result
        assert row["attempts"] == outcome.attempts
        assert (row["tenant"], row["execution_id"], row["event_id"]) == ("t", execution_id, "e")
        assert row["step_id"] == outcome.step_id
    assert all(o.unrecorded is None for o in first.outcomes if o.status == "failed")
    with store.read(tenant="t") as conn:
        assert store.action_results_for(conn, execution_id, ["e"], tenant="t") == {}

    # a crash before the commit: nothing was recorded, so every step the run reaches runs
    # again (which ones it reaches may differ: side by side, a failure stops what has not
    # started yet)
    again = Probe()
    second = runner(again, []).run(job)
    ran = {c[0] for c in again.calls}
    assert {o.step_id for o in second.outcomes if o.status == "succeeded"} <= ran

    # the commit records the second run's results; a third run reruns nothing that succeeded
    with store.write(tenant="t") as conn:
        store.insert_action_results(conn, second.unrecorded)
        store.insert_action_results(conn, second.unrecorded)  # a key recorded stays as it is
    third_probe = Probe()
    third = runner(third_probe, []).run(job)
    succeeded = {o.step_id for o in second.outcomes if o.status == "succeeded"}
    assert not ({c[0] for c in third_probe.calls} & succeeded)
    with store.read(tenant="t") as conn:
        recorded = store.action_results_for(conn, execution_id, ["e"], tenant="t")
    for outcome in second.outcomes:
        if outcome.unrecorded is not None:
            assert recorded[outcome.unrecorded["key"]] == outcome.result
    assert all(
        o.unrecorded is None
        for o in third.outcomes
        if o.status == "succeeded" and o.step_id in succeeded
    )
