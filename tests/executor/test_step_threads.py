"""The threads a runner's steps run on: each transition keeps to max_parallel steps at a time,
transitions running at once share the runner's threads without holding each other back, an
engine failure goes up only after the steps already started have finished, and close() ends
the threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ledgerflow import definitions
from ledgerflow.engine import Engine
from ledgerflow.errors import StoreUnavailableError
from ledgerflow.executor import GraphRunner, StepJob
from ledgerflow.registry import ActionContext, ActionRegistry, Param
from ledgerflow.store.sql import SQLStore

TENANT = "acme"


class Gauge:
    """A real action that sleeps a while and notes how many of its calls overlapped."""

    def __init__(self, pause: float = 0.05) -> None:
        self.pause = pause
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.finished: list[str] = []
        self.threads: set[str] = set()
        self.thread_objects: list[threading.Thread] = []
        self.release = threading.Event()
        self.held_too_long = False

    def __call__(self, params: dict[str, Any], context: ActionContext) -> dict[str, Any]:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.threads.add(threading.current_thread().name)
            self.thread_objects.append(threading.current_thread())
        if params.get("hold"):
            # held until the test lets go (a deadlock guard, not a measure of speed)
            self.held_too_long |= not self.release.wait(timeout=30)
        else:
            time.sleep(params.get("pause", self.pause))
        if params.get("fail"):
            raise StoreUnavailableError("the database went away")
        with self.lock:
            self.running -= 1
            self.finished.append(context.step_id)
        return {}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLStore]:
    store = SQLStore(f"sqlite:///{tmp_path}/steps.db")
    store.upgrade()
    yield store
    store.close()


def _runner(store: SQLStore, gauge: Gauge, max_parallel: int) -> GraphRunner:
    registry = ActionRegistry()
    registry.register_simple_action(
        "gauge",
        "Sleep, noting the overlap.",
        [
            Param(name="pause", type="number", required=False, default=0.05),
            Param(name="fail", type="boolean", required=False, default=False),
            Param(name="hold", type="boolean", required=False, default=False),
        ],
        gauge,
    )
    return GraphRunner(store, registry, max_parallel=max_parallel)


def _job(runner: GraphRunner, steps: list[dict[str, Any]], name: str) -> StepJob:
    body = {
        "name": f"Wide_{name}",
        "version": 1,
        "initial_state": "a",
        "states": ["a", "b"],
        "terminal_states": ["b"],
        "transitions": [{"from": "a", "to": "b", "on": "Go", "steps": steps}],
    }
    definition = definitions.compile_workflow(definitions.parse(body))
    # the steps' results belong to a real execution of the tenant (the engine is not closed:
    # the store is the fixture's)
    engine = Engine(runner.store, registry=runner.registry)
    engine.register(definition)
    execution_id = engine.create_execution(f"Wide_{name}", tenant=TENANT, execution_id=name)
    return StepJob(
        execution_id=execution_id,
        tenant=TENANT,
        event_id="e",
        steps=definition.transitions[0].steps,
        variables={"context": {}, "payload": {}},
    )


def _wide(count: int, **params: Any) -> list[dict[str, Any]]:
    return [{"id": f"s{i}", "action": "gauge", "params": dict(params)} for i in range(count)]


def test_a_transition_keeps_to_max_parallel_steps_at_a_time(store: SQLStore) -> None:
    gauge = Gauge()
    runner = _runner(store, gauge, max_parallel=2)
    try:
        result = runner.run(_job(runner, _wide(6), "x1"))
    finally:
        runner.close()
    assert result.failure is None
    assert sorted(gauge.finished) == [f"s{i}" for i in range(6)]
    assert gauge.most == 2


def test_transitions_at_once_share_the_threads_without_waiting_for_each_other(
    store: SQLStore,
) -> None:
    gauge = Gauge()
    runner = _runner(store, gauge, max_parallel=2)
    held = _job(runner, _wide(2, hold=True), "held")
    quick = [_job(runner, _wide(2, pause=0.01), f"quick{i}") for i in range(3)]
    try:
        background = threading.Thread(target=runner.run, args=(held,))
        background.start()
        while gauge.running < 2:  # the held transition's two steps have started
            time.sleep(0.01)
        # the quick transitions run to the end while the held one's steps still wait
        for job in quick:
            assert runner.run(job).failure is None
        assert len(gauge.finished) == 6
        gauge.release.set()
        background.join()
    finally:
        gauge.release.set()
        runner.close()
    assert not gauge.held_too_long
    assert len(gauge.finished) == 8
    # threads are kept: eight steps, at most four at once, on at most four threads
    assert len(gauge.threads) <= 4


def test_an_engine_failure_goes_up_after_the_steps_already_started(store: SQLStore) -> None:
    gauge = Gauge()
    runner = _runner(store, gauge, max_parallel=4)
    steps = [
        {"id": "fails", "action": "gauge", "params": {"pause": 0.01, "fail": True}},
        {"id": "slow", "action": "gauge", "params": {"pause": 0.3}},
    ]
    try:
        with pytest.raises(StoreUnavailableError):
            runner.run(_job(runner, steps, "x2"))
        # the sibling that was running had finished when the error came up
        assert gauge.finished == ["slow"]
    finally:
        runner.close()


def test_close_ends_the_step_threads(store: SQLStore) -> None:
    gauge = Gauge(pause=0.01)
    runner = _runner(store, gauge, max_parallel=3)
    runner.run(_job(runner, _wide(3), "x3"))
    step_threads = [t for t in gauge.thread_objects if t is not threading.current_thread()]
    # three steps at once: each on a step thread
    assert len(step_threads) == 3
    runner.close()
    assert not any(thread.is_alive() for thread in step_threads)


def test_steps_one_after_another_run_on_the_callers_thread(store: SQLStore) -> None:
    """A chain of steps has one ready at a time: it runs where the caller would wait for it,
    with no hand-over to a step thread (nor one started)."""
    gauge = Gauge(pause=0.0)
    runner = _runner(store, gauge, max_parallel=4)
    chain = [
        {"id": f"s{n}", "action": "gauge", **({"depends_on": [f"s{n - 1}"]} if n else {})}
        for n in range(5)
    ]
    try:
        result = runner.run(_job(runner, chain, "x4"))
        assert result.failure is None
        assert gauge.finished == [f"s{n}" for n in range(5)]
        assert gauge.threads == {threading.current_thread().name}
        assert runner._pool is None
    finally:
        runner.close()


def test_a_slow_step_does_not_hold_back_what_its_siblings_make_ready(store: SQLStore) -> None:
    """With a slow step running, the step a fast sibling makes ready starts at once, on a
    step thread: the caller's thread never runs a step while another is running."""
    gauge = Gauge()
    runner = _runner(store, gauge, max_parallel=4)
    steps = [
        {"id": "slow", "action": "gauge", "params": {"pause": 0.6}},
        {"id": "fast", "action": "gauge", "params": {"pause": 0.01}},
        {"id": "next", "action": "gauge", "params": {"pause": 0.01}, "depends_on": ["fast"]},
    ]
    try:
        result = runner.run(_job(runner, steps, "x5"))
    finally:
        runner.close()
    assert result.failure is None
    assert gauge.finished == ["fast", "next", "slow"]
    assert threading.current_thread().name not in gauge.threads
