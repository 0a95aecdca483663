"""The InvoiceApproval example doing its real work through the engine, on SQLite and
PostgreSQL: rows in its invoices and payments tables, the approval's fork/join, and the
compensation when a payment cannot be scheduled."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import invoice_app
from ledgerflow import StepCompensated, StepFailed, StepSucceeded
from ledgerflow.engine import Engine, HistoryEntry
from ledgerflow.store import ALL_TENANTS
from ledgerflow.worker import Worker

ROOT = Path(__file__).resolve().parents[2]
TENANT = "acme"
INVOICE = {"id": "INV-1", "total": 120.5, "customer_id": "C-1", "currency": "USD"}


def drain(engine: Engine) -> None:
    Worker(engine, poll_interval=0.01).run_once()


def submitted(engine: Engine, tenant: str = TENANT, **invoice: Any) -> str:
    execution_id = engine.create_execution("InvoiceApproval", tenant=tenant)
    engine.enqueue_event(
        execution_id,
        "CreateInvoice",
        tenant=tenant,
        role="clerk",
        payload={"invoice": {**INVOICE, **invoice}},
    )
    drain(engine)
    return execution_id


def approve(engine: Engine, execution_id: str, role: str = "manager") -> None:
    engine.enqueue_event(
        execution_id, "ApproveInvoice", tenant=TENANT, role=role, payload={"approved_by": "ann"}
    )
    drain(engine)


def steps_of(history: list[HistoryEntry], kind: str) -> list[str]:
    """The step ids of the ``kind`` records (``step_succeeded``, …), in ledger order."""
    return [
        h.record.step_id
        for h in history
        if h.kind == kind and isinstance(h.record, StepSucceeded | StepFailed | StepCompensated)
    ]


def test_submitting_writes_the_invoice_row(engine: Engine) -> None:
    submitted(engine)
    assert invoice_app.rows(engine, TENANT) == {
        "invoices": [
            {
                "tenant": TENANT,
                "id": "INV-1",
                "customer_id": "C-1",
                "total": 120.5,
                "currency": "USD",
                "status": "pending_approval",
                "approved_by": None,
                "rejected_by": None,
                "rejection_reason": None,
            }
        ],
        "payments": [],
    }


def test_approval_schedules_one_payment_and_joins_after_both_branches(engine: Engine) -> None:
    execution_id = submitted(engine)
    approve(engine, execution_id)
    tables = invoice_app.rows(engine, TENANT)
    [row] = tables["invoices"]
    assert (row["status"], row["approved_by"]) == ("payment_scheduled", "ann")
    assert tables["payments"] == [
        {
            "tenant": TENANT,
            "invoice_id": "INV-1",
            "amount": 120.5,
            "currency": "USD",
            "status": "scheduled",
        }
    ]
    history = engine.history(execution_id, tenant=TENANT)
    order = steps_of(history, "step_succeeded")
    assert order[:2] == ["record_invoice", "notify_approvers"]
    approval = order[2:]
    assert approval[0] == "mark_approved"
    assert set(approval[1:3]) == {"schedule_payment", "notify_clerk"}  # in either order
    assert approval[3] == "mark_payment_scheduled"
    records = {h.record.step_id: h.record for h in history if isinstance(h.record, StepSucceeded)}
    join = records["mark_payment_scheduled"]
    for branch in ("schedule_payment", "notify_clerk"):
        ended = records[branch].started_at + records[branch].duration
        assert join.started_at >= ended - 0.01  # wall clock against a monotonic duration
        assert records[branch].started_at >= records["mark_approved"].started_at


def test_the_tables_are_scoped_to_the_tenant(engine: Engine) -> None:
    submitted(engine, tenant="acme")
    submitted(engine, tenant="globex", total=99.0)
    assert [r["total"] for r in invoice_app.rows(engine, "acme")["invoices"]] == [120.5]
    assert [r["total"] for r in invoice_app.rows(engine, "globex")["invoices"]] == [99.0]


def test_a_payment_that_cannot_be_scheduled_puts_the_invoice_back(engine: Engine) -> None:
    execution_id = submitted(engine)
    # a payment for this invoice exists already: schedule_payment's insert fails
    with engine.store.write(tenant=ALL_TENANTS) as conn:
        conn.execute(
            invoice_app.payments.insert().values(
                tenant=TENANT, invoice_id="INV-1", amount=1, currency="USD", status="scheduled"
            )
        )
    approve(engine, execution_id)
    history = engine.history(execution_id, tenant=TENANT)
    assert steps_of(history, "step_failed") == ["schedule_payment"]
    # the completed steps are undone, newest first: notify_clerk ran beside the failing step
    assert steps_of(history, "step_compensated") == ["notify_clerk", "mark_approved"]
    assert "mark_payment_scheduled" not in steps_of(history, "step_succeeded")
    tables = invoice_app.rows(engine, TENANT)
    [row] = tables["invoices"]
    assert (row["status"], row["approved_by"]) == ("pending_approval", None)
    assert [p["amount"] for p in tables["payments"]] == [1.0]  # only the one that was there
    # the transition is reverted: the invoice awaits a decision again
    execution = engine.get_execution(execution_id, tenant=TENANT)
    assert (execution.state, execution.status.value) == ("pending_approval", "active")
    assert history[-1].kind == "transition_reverted"


def test_a_compensated_escalated_approval_goes_back_to_escalated(engine: Engine) -> None:
    execution_id = submitted(engine)
    # the timer would send it after 48 hours; any sender may, as the transition names no role
    engine.enqueue_event(execution_id, "EscalationDue", tenant=TENANT)
    drain(engine)
    [row] = invoice_app.rows(engine, TENANT)["invoices"]
    assert row["status"] == "escalated"
    with engine.store.write(tenant=ALL_TENANTS) as conn:
        conn.execute(
            invoice_app.payments.insert().values(
                tenant=TENANT, invoice_id="INV-1", amount=1, currency="USD", status="scheduled"
            )
        )
    approve(engine, execution_id, role="director")
    [row] = invoice_app.rows(engine, TENANT)["invoices"]
    assert (row["status"], row["approved_by"]) == ("escalated", None)
    with engine.store.write(tenant=ALL_TENANTS) as conn:
        conn.execute(invoice_app.payments.delete())
    approve(engine, execution_id, role="director")
    [row] = invoice_app.rows(engine, TENANT)["invoices"]
    assert (row["status"], row["approved_by"]) == ("payment_scheduled", "ann")


def test_rejection_records_who_and_why(engine: Engine) -> None:
    execution_id = submitted(engine)
    engine.enqueue_event(
        execution_id,
        "RejectInvoice",
        tenant=TENANT,
        role="manager",
        payload={"rejected_by": "bob", "reason": "duplicate"},
    )
    drain(engine)
    [row] = invoice_app.rows(engine, TENANT)["invoices"]
    assert (row["status"], row["rejected_by"], row["rejection_reason"]) == (
        "rejected",
        "bob",
        "duplicate",
    )
    assert invoice_app.rows(engine, TENANT)["payments"] == []


def test_setup_twice_changes_nothing(engine: Engine) -> None:
    submitted(engine)
    invoice_app.setup(engine)
    assert len(invoice_app.rows(engine, TENANT)["invoices"]) == 1


def test_the_wheel_ships_the_app_beside_the_definition() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    shipped = config["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    here = Path(invoice_app.__file__).resolve().parent
    assert here == invoice_app.DEFINITION.parent
    for name in ("invoice_app.py", "invoice_approval.yaml"):
        source = (here / name).relative_to(ROOT).as_posix()
        assert shipped[source] == f"ledgerflow/examples/{name}"
