"""async def actions run on the runner's own event loop, alongside plain ones."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from ledgerflow import definitions
from ledgerflow.executor import GraphRunner, StepJob
from ledgerflow.registry import ActionContext, ActionRegistry, Param
from ledgerflow.store.sql import SQLStore
from support.executions import ensure_execution


def test_async_actions_run_on_one_loop_owned_by_the_runner(tmp_path: Path) -> None:
    store = SQLStore(f"sqlite:///{tmp_path}/async.db")
    store.upgrade()
    loops: list[int] = []

    async def fetch(params: dict[str, Any], context: ActionContext) -> dict[str, Any]:
        await asyncio.sleep(0.01)
        loops.append(id(asyncio.get_running_loop()))
        return {"n": params["n"] * 2, "thread": threading.current_thread().name}

    registry = ActionRegistry()
    registry.register_simple_action("fetch", "Fetch.", [Param(name="n", type="integer")], fetch)
    workflow = {
        "name": "A",
        "version": 1,
        "initial_state": "x",
        "states": ["x", "y"],
        "terminal_states": ["y"],
        "transitions": [
            {
                "from": "x",
                "to": "y",
                "on": "Go",
                "steps": [
                    {"id": "a", "action": "fetch", "params": {"n": 1}},
                    {"id": "b", "action": "fetch", "params": {"n": 2}},
                    {
                        "id": "c",
                        "action": "fetch",
                        "depends_on": ["a", "b"],
                        "params": {"n": {"expr": "steps.a.result.n + steps.b.result.n"}},
                    },
                ],
            }
        ],
    }
    steps = definitions.compile_workflow(definitions.parse(workflow)).transitions[0].steps
    runner = GraphRunner(store, registry)
    ensure_execution(store, "x", "t")
    result = runner.run(
        StepJob(
            execution_id="x",
            tenant="t",
            event_id="e",
            steps=steps,
            variables={"payload": {}, "context": {}, "role": None, "event": "Go", "state": "x"},
        )
    )
    runner.close()
    store.close()
    assert result.failure is None
    by_step = {o.step_id: o.result for o in result.outcomes}
    assert by_step["c"]["n"] == 12
    assert {r["thread"] for r in by_step.values()} == {"ledgerflow-async-actions"}
    assert len(set(loops)) == 1
