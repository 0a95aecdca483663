"""A user app for subprocess-worker tests (``ledgerflow --app counting_app``).

Its ``Counting`` workflow runs one database action, ``count.hit``, that writes a row to
``hits`` in the action's own transaction, recording which worker process ran it and when, and
can be made to hang before its commit. Tests count those rows to check exactly-once effects and
that no two workers ever worked on one execution at the same time.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ledgerflow.engine import Engine
from ledgerflow.registry import ActionContext, Isolation, Param

WORKFLOW = {
    "name": "Counting",
    "version": 1,
    "initial_state": "open",
    "states": ["open", "closed"],
    "terminal_states": ["closed"],
    "transitions": [
        {
            "name": "hit",
            "from": "open",
            "to": "open",
            "on": "Hit",
            "steps": [{"id": "hit", "action": "count.hit", "params": {"n": {"expr": "payload.n"}}}],
        },
        {"name": "close", "from": "open", "to": "closed", "on": "Close"},
    ],
}

hits = sa.Table(
    "hits",
    sa.MetaData(),
    sa.Column("key", sa.String(300), primary_key=True),
    sa.Column("execution_id", sa.String(64), nullable=False),
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started", sa.Double, nullable=False),
    sa.Column("finished", sa.Double, nullable=False),
)


def _hit(params: dict[str, Any], context: ActionContext) -> dict[str, Any]:
    assert context.connection is not None
    started = time.time()
    marker = os.environ.get("COUNTING_HANG_MARKER")
    if marker:
        # tell the test the effect is written but not committed, then hang until killed
        context.connection.execute(
            hits.insert().values(
                key=context.idempotency_key,
                execution_id=context.execution_id,
                n=params["n"],
                pid=os.getpid(),
                started=started,
                finished=started,
            )
        )
        Path(marker).write_text(str(os.getpid()))
        time.sleep(3600)
    started_marker = os.environ.get("COUNTING_STARTED_MARKER")
    if started_marker:
        Path(started_marker).write_text(str(os.getpid()))  # the action is under way
    time.sleep(float(os.environ.get("COUNTING_STEP_SECONDS", "0")))
    context.connection.execute(
        hits.insert().values(
            key=context.idempotency_key,
            execution_id=context.execution_id,
            n=params["n"],
            pid=os.getpid(),
            started=started,
            finished=time.time(),
        )
    )
    return {"n": params["n"], "pid": os.getpid()}


def setup(engine: Engine) -> None:
    """Create the ``hits`` table and register the action and the workflow."""
    hits.create(engine.store.engine, checkfirst=True)
    if "count.hit" not in engine.registry:
        engine.registry.register_database_action(
            "count.hit",
            "Count one hit in the hits table.",
            [Param(name="n", type="integer")],
            Isolation.READ_COMMITTED,
            _hit,
        )
    from ledgerflow import definitions

    engine.register(definitions.compile_workflow(definitions.parse(WORKFLOW)))
