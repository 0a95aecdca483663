"""How much parallel steps save: two independent 200 ms steps against two dependent ones.

Runs the engine's step runner (``GraphRunner``) on a temporary SQLite ledger with a plain action
that sleeps 200 ms, for a transition of two independent steps and one of two steps where the
second depends on the first, and prints the median wall time of each and their ratio. The
ratio is what matters: independent steps should take about half as long (about 200 ms, not
400 ms). Reproduce with ``python benchmarks/steps_bench.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from ledgerflow import definitions
from ledgerflow.executor import GraphRunner, StepJob
from ledgerflow.registry import ActionContext, ActionRegistry
from ledgerflow.store.sql import SQLStore

STEP_SECONDS = 0.2


def _sleep(params: dict[str, Any], context: ActionContext) -> None:
    time.sleep(STEP_SECONDS)


def _workflow(dependent: bool) -> dict[str, Any]:
    second: dict[str, Any] = {"id": "b", "action": "sleep"}
    if dependent:
        second["depends_on"] = ["a"]
    return {
        "name": "Steps",
        "version": 1,
        "initial_state": "x",
        "states": ["x", "y"],
        "terminal_states": ["y"],
        "transitions": [
            {"from": "x", "to": "y", "on": "Go", "steps": [{"id": "a", "action": "sleep"}, second]}
        ],
    }


def _time(runner: GraphRunner, dependent: bool, rounds: int, offset: int) -> float:
    steps = (
        definitions.compile_workflow(definitions.parse(_workflow(dependent))).transitions[0].steps
    )
    samples = []
    for n in range(rounds):
        job = StepJob(
            execution_id=f"bench-{offset}-{n}",
            tenant="bench",
            event_id="e",
            steps=steps,
            variables={"payload": {}, "context": {}, "role": None, "event": "Go", "state": "x"},
        )
        started = time.perf_counter()
        result = runner.run(job)
        samples.append(time.perf_counter() - started)
        assert result.failure is None, result.failure
    return statistics.median(samples)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="runs of each shape (median kept)")
    args = parser.parse_args(argv)
    registry = ActionRegistry()
    registry.register_simple_action("sleep", "Sleep 200 ms.", [], _sleep)
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLStore(f"sqlite:///{tmp}/steps.db")
        store.upgrade()
        runner = GraphRunner(store, registry)
        parallel = _time(runner, dependent=False, rounds=args.rounds, offset=0)
        chained = _time(runner, dependent=True, rounds=args.rounds, offset=1)
        store.close()
    print(f"two {STEP_SECONDS * 1000:.0f} ms steps, median of {args.rounds} runs each")
    print(f"  independent (may run in parallel): {parallel * 1000:7.1f} ms")
    print(f"  dependent (b after a):             {chained * 1000:7.1f} ms")
    print(f"  independent / dependent:           {parallel / chained:7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
