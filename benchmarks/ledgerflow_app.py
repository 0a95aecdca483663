"""The reference workload as a ledgerflow app, and ledgerflow as a system of the comparison.

The workers import this module by ``ledgerflow --app ledgerflow_app`` (``PYTHONPATH``
``benchmarks/``); its :func:`setup` registers two workflows and their actions:

- ``InvoiceBench``: the event ``InvoiceSubmitted`` (the six-field payload) moves ``received`` to
  ``approved`` through the steps ``a`` and ``b`` and then ``c`` (``depends_on: [a, b]``), each
  the database action ``bench.effect``: its one write commits in the transaction that records
  the step's result, at READ COMMITTED, so each happens exactly once;
- ``StepsBench``: the event ``Go`` runs ten sequential steps, nine of the simple action
  ``bench.noop`` and a tenth ``bench.steps_done`` (a database action) that writes the row the
  benchmark waits for. Every step is recorded in the ledger (``step_succeeded``).
- ``QuickStepsBench``: the same, its nine no-ops ``bench.quick_noop``, registered with
  ``checkpoint=False``: their results are recorded with the event's commit.

:class:`LedgerflowSystem` is ledgerflow under :func:`workload.measure`: ``ledgerflow worker``
processes, and one :class:`~ledgerflow.engine.Engine` as the client. A submission is what a
client does to start a workflow: :meth:`Engine.start`, the execution and its first event in one
transaction.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa

import workload
from ledgerflow import definitions
from ledgerflow.engine import Engine
from ledgerflow.registry import ActionContext, Isolation, Param

TENANT = "bench"
WORKER_THREADS = 2
POLL_INTERVAL = 0.5  # the worker's default; idle workers are woken by NOTIFY or XREADGROUP

_STRING = {"type": "string"}
INVOICE = {
    "name": "InvoiceBench",
    "version": 1,
    "initial_state": "received",
    "states": ["received", "approved"],
    "terminal_states": ["approved"],
    "events": {
        "InvoiceSubmitted": {
            "payload": {
                "type": "object",
                "required": ["workflow", "invoice_id", "amount"],
                "properties": {
                    "workflow": _STRING,
                    "invoice_id": _STRING,
                    "customer_id": _STRING,
                    "amount": {"type": "number"},
                    "currency": _STRING,
                    "submitted_by": _STRING,
                },
            }
        }
    },
    "transitions": [
        {
            "name": "approve",
            "from": "received",
            "to": "approved",
            "on": "InvoiceSubmitted",
            "steps": [
                {
                    "id": step.lower(),
                    "action": "bench.effect",
                    "params": {"workflow": {"expr": "payload.workflow"}, "action": step},
                    **({"depends_on": ["a", "b"]} if step == "C" else {}),
                }
                for step in workload.ACTIONS
            ],
        }
    ],
}

STEPS = {
    "name": "StepsBench",
    "version": 1,
    "initial_state": "idle",
    "states": ["idle", "done"],
    "terminal_states": ["done"],
    "transitions": [
        {
            "name": "go",
            "from": "idle",
            "to": "done",
            "on": "Go",
            "steps": [
                {
                    "id": f"s{n}",
                    "action": "bench.steps_done" if n == workload.STEPS else "bench.noop",
                    **({"params": {"workflow": {"expr": "payload.workflow"}}} if n == 10 else {}),
                    **({"depends_on": [f"s{n - 1}"]} if n > 1 else {}),
                }
                for n in range(1, workload.STEPS + 1)
            ],
        }
    ],
}


#: the steps workflow with its nine no-ops not checkpointed (``checkpoint=False``)
QUICK_STEPS = {
    **STEPS,
    "name": "QuickStepsBench",
    "transitions": [
        {
            **STEPS["transitions"][0],  # type: ignore[index]
            "steps": [
                {**step, "action": "bench.quick_noop"} if step["action"] == "bench.noop" else step
                for step in STEPS["transitions"][0]["steps"]  # type: ignore[index]
            ],
        }
    ],
}


def _effect(params: dict[str, Any], context: ActionContext) -> dict[str, Any]:
    assert context.connection is not None
    seen = workload.write_effect(context.connection, params["workflow"], params["action"])
    return {"ab_seen": seen}


def _noop(params: dict[str, Any], context: ActionContext) -> None:
    return None


def _steps_done(params: dict[str, Any], context: ActionContext) -> None:
    assert context.connection is not None
    workload.write_steps_done(context.connection, params["workflow"])


def setup(engine: Engine) -> None:
    """Create the workload's tables; register the actions and the two workflows."""
    workload.create_tables(engine.store.engine.url.render_as_string(hide_password=False))
    registry = engine.registry
    if "bench.effect" not in registry:
        registry.register_database_action(
            "bench.effect",
            "One write of the reference workload (C also counts its workflow's A and B rows).",
            [Param(name="workflow", type="string"), Param(name="action", type="string")],
            Isolation.READ_COMMITTED,
            _effect,
        )
        registry.register_simple_action("bench.noop", "Do nothing.", [], _noop)
        registry.register_simple_action(
            "bench.quick_noop",
            "Do nothing; the result is recorded with the event's commit.",
            [],
            _noop,
            checkpoint=False,
        )
        registry.register_database_action(
            "bench.steps_done",
            "Record that a steps workflow finished.",
            [Param(name="workflow", type="string")],
            Isolation.READ_COMMITTED,
            _steps_done,
        )
    for workflow in (INVOICE, STEPS, QUICK_STEPS):
        engine.register(definitions.compile_workflow(definitions.parse(workflow)))


class LedgerflowSystem:
    """ledgerflow on ``db_url`` with the transport ``broker``, ``processes`` worker processes
    of :data:`WORKER_THREADS` threads each."""

    def __init__(
        self, name: str, db_url: str, broker: str, processes: int, *, effects_url: str
    ) -> None:
        self.name = name
        self.db_url = db_url
        self.broker = broker
        self.processes = processes
        self.effects_url = effects_url
        self.engine = Engine(db_url, broker=broker)
        self.engine.store.upgrade()
        setup(self.engine)
        ping: Callable[[], None] | None = getattr(self.engine.transport, "ping", None)
        if ping is not None:
            ping()  # connect the client to Redis before the clock starts

    has_steps = True

    def ready(self) -> bool:
        return True

    def worker_commands(self) -> list[list[str]]:
        command = [
            sys.executable,
            "-m",
            "ledgerflow",
            "--db",
            self.db_url,
            "--broker",
            self.broker,
            "--app",
            "ledgerflow_app",
            "worker",
            "--concurrency",
            str(WORKER_THREADS),
            "--poll-interval",
            str(POLL_INTERVAL),
        ]
        return [command] * self.processes

    def worker_env(self) -> dict[str, str]:
        return {}

    def _start(self, workflow: str, execution_id: str, event: str, data: Mapping[str, Any]) -> None:
        self.engine.start(
            workflow, event, tenant=TENANT, payload=dict(data), execution_id=execution_id
        )

    def submit(self, workflow: str, data: Mapping[str, Any]) -> None:
        self._start("InvoiceBench", workflow, "InvoiceSubmitted", data)

    def submit_steps(self, workflow: str) -> None:
        self._start("StepsBench", workflow, "Go", {"workflow": workflow})

    def submit_quick_steps(self, workflow: str) -> None:
        """Start one steps workflow whose no-ops are not checkpointed."""
        self._start("QuickStepsBench", workflow, "Go", {"workflow": workflow})

    def close(self) -> None:
        self.engine.close()

    def ledger_counts(self) -> dict[str, int]:
        """Records by kind in the whole ledger: what the workers wrote per workflow."""
        with self.engine.store.read() as conn:
            return {
                str(kind): int(n)
                for kind, n in conn.execute(
                    sa.text("SELECT kind, count(*) FROM lf_events GROUP BY kind")
                ).all()
            }
