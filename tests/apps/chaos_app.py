"""The user app of the reliability battery (``ledgerflow --app apps.chaos_app``).

Its ``Chaos`` workflow runs one database action per ``Hit`` event, ``chaos.effect``, which
writes one row to ``chaos_effects`` in the action's own transaction: keyed by the step's
idempotency key, carrying the execution's tenant (behind the tenant wall on PostgreSQL) and a
number the database assigns in insert order, so a test can check that every effect is there
exactly once and in the order of the ledger. ``Snoop`` runs ``chaos.snoop``, a hostile database
action that forgets every tenant filter and tries to read, change, delete and forge other
tenants' rows, and to lift the wall by claiming every tenant; it reports what it managed to do.
The battery runs database actions as a confined role (``LEDGERFLOW_ACTION_DB``).

Faults are injected into a worker process through its environment:

``CHAOS_DIE_AT=effect:N``
    the process kills itself (SIGKILL) at its N-th ``chaos.effect``, after writing the effect
    and before the transaction that records it commits;
``CHAOS_DIE_AT=commit:N``
    the process kills itself when its N-th event is committed, before the broker message
    that woke it is acknowledged (from the ``ledgerflow_event_processed`` hook, which runs
    between the two);
``CHAOS_FAULT_DIR``
    where a file is written just before such a kill, so the test counts the faults it caused.

The InvoiceApproval example's tables and workflow are set up too: every scenario runs both.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

import invoice_app
from ledgerflow import definitions, hookimpl
from ledgerflow.engine import Engine
from ledgerflow.registry import ActionContext, Isolation, Param
from ledgerflow.store import tenant_wall

__all__ = ["SNOOP", "WORKFLOW", "effects", "metadata", "setup"]

WORKFLOW: dict[str, Any] = {
    "name": "Chaos",
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
            "set": {"last": {"expr": "payload.n"}},
            "steps": [
                {"id": "effect", "action": "chaos.effect", "params": {"n": {"expr": "payload.n"}}}
            ],
        },
        {"name": "close", "from": "open", "to": "closed", "on": "Close"},
    ],
}
"""``Hit`` (payload ``{"n": …}``) writes one effect row and keeps ``n`` as ``last`` in the
context; ``Close`` ends the execution."""

SNOOP: dict[str, Any] = {
    "name": "ChaosSnoop",
    "version": 1,
    "initial_state": "idle",
    "states": ["idle"],
    "transitions": [
        {
            "name": "snoop",
            "from": "idle",
            "to": "idle",
            "on": "Snoop",
            "steps": [{"id": "snoop", "action": "chaos.snoop"}],
        }
    ],
}
"""Each ``Snoop`` runs the hostile action once."""

metadata = sa.MetaData()

effects = sa.Table(
    "chaos_effects",
    metadata,
    sa.Column("key", sa.String(300), primary_key=True),
    sa.Column("tenant", sa.String(200), nullable=False),
    sa.Column("execution_id", sa.String(64), nullable=False, index=True),
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    # assigned by the database in insert order: one writer per execution inserts its effects
    # one after another, so within an execution this orders them as they happened
    sa.Column("ord", sa.BigInteger, sa.Identity(), nullable=False),
)
"""One row per effect: exactly one per ``Hit`` event when the guarantees hold."""


class _Faults:
    """The kill points of this process, read from its environment once."""

    def __init__(self) -> None:
        point, _, count = os.environ.get("CHAOS_DIE_AT", "").partition(":")
        self.point = point
        self.at = int(count) if count.isdigit() else 0
        self.directory = os.environ.get("CHAOS_FAULT_DIR")
        self._seen = {"effect": 0, "commit": 0}
        self._lock = threading.Lock()

    def reached(self, point: str) -> None:
        """Count one passage through ``point``; die there if this is the chosen one."""
        if point != self.point or not self.at:
            return
        with self._lock:
            self._seen[point] += 1
            chosen = self._seen[point] == self.at
        if chosen:
            if self.directory:
                Path(self.directory, f"{os.getpid()}-{point}").write_text(point)
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(60)  # never reached: SIGKILL is not deferred


_faults = _Faults()


def _effect(params: dict[str, Any], context: ActionContext) -> dict[str, Any]:
    assert context.connection is not None
    context.connection.execute(
        effects.insert().values(
            key=context.idempotency_key,
            tenant=context.tenant,
            execution_id=context.execution_id,
            n=params["n"],
            pid=os.getpid(),
        )
    )
    _faults.reached("effect")  # written, not committed
    return {"n": params["n"]}


def _refused(conn: sa.Connection, attempt: Callable[[], int]) -> int:
    """``attempt``'s row count, in a savepoint; 0 when the database refuses it (no right to
    the table, or the wall): the savepoint is rolled back and the action goes on."""
    try:
        with conn.begin_nested():
            return attempt()
    except sa.exc.DBAPIError:
        return 0


def _snoop(params: dict[str, Any], context: ActionContext) -> dict[str, Any]:
    """Forget every tenant filter: read everything, change and delete everything, try to
    write a row for another tenant, then claim to act for every tenant, and for other tenants
    by name, and read again.
    Row-level security, and the confined role database actions run as, are the walls this
    must hit."""
    conn = context.connection
    assert conn is not None
    seen = sorted(
        {r.tenant for r in conn.execute(sa.select(effects.c.tenant))}
        | {r.tenant for r in conn.execute(sa.select(invoice_app.invoices.c.tenant))}
        | {r[0] for r in conn.exec_driver_sql("SELECT tenant FROM lf_executions")}
    )
    others = effects.c.tenant != context.tenant
    updated = conn.execute(effects.update().where(others).values(n=-1)).rowcount
    deleted = conn.execute(effects.delete().where(others)).rowcount
    deleted += conn.execute(
        invoice_app.invoices.delete().where(invoice_app.invoices.c.tenant != context.tenant)
    ).rowcount
    deleted += _refused(conn, lambda: conn.exec_driver_sql("DELETE FROM lf_outbox").rowcount)
    forged = bool(
        _refused(
            conn,
            lambda: (
                conn.execute(
                    effects.insert().values(
                        key=f"forged:{context.idempotency_key}",
                        tenant=f"not-{context.tenant}",
                        execution_id=context.execution_id,
                        n=-1,
                        pid=os.getpid(),
                    )
                ).rowcount
            ),
        )
    )
    # last, the wall's own switch: claim to act for every tenant, then for others by name
    escalated: set[str] = set()
    for claim in ("*", "acme", "initech", "globex"):
        if claim == context.tenant:
            continue
        conn.execute(_CLAIM, {"tenant": claim})
        escalated |= {r.tenant for r in conn.execute(sa.select(effects.c.tenant))}
        escalated |= {r[0] for r in conn.exec_driver_sql("SELECT tenant FROM lf_executions")}
    # and back: left at another tenant, the step's own result could not be recorded
    conn.execute(_CLAIM, {"tenant": context.tenant})
    return {
        "tenants_seen": seen,
        "updated": updated,
        "deleted": deleted,
        "forged": forged,
        "tenants_seen_as_all": sorted(escalated),
    }


_CLAIM = sa.text("SELECT set_config('ledgerflow.tenant', :tenant, true)")


class _KillAfterCommit:
    """Dies (when told to) after an event's outcome is committed, before its ack."""

    @hookimpl
    def ledgerflow_event_processed(self, execution_id: str, tenant: str, event_id: str) -> None:
        _faults.reached("commit")


def setup(engine: Engine) -> None:
    """Create ``chaos_effects`` (behind the tenant wall) and the InvoiceApproval example's
    tables, register the actions and workflows, and arm the kill points of the environment."""
    invoice_app.setup(engine)
    with engine.store.write() as conn:
        metadata.create_all(conn, checkfirst=True)
        tenant_wall(conn, effects)
    if "chaos.effect" not in engine.registry:
        engine.registry.register_database_action(
            "chaos.effect",
            "Write one effect row.",
            [Param(name="n", type="integer")],
            Isolation.READ_COMMITTED,
            _effect,
        )
        engine.registry.register_database_action(
            "chaos.snoop",
            "Try to read and change other tenants' rows.",
            [],
            Isolation.READ_COMMITTED,
            _snoop,
        )
    for body in (WORKFLOW, SNOOP):
        engine.register(definitions.compile_workflow(definitions.parse(body)))
    if _faults.point == "commit" and not engine.plugins.manager.has_plugin("chaos-faults"):
        engine.add_plugin(_KillAfterCommit(), "chaos-faults")
