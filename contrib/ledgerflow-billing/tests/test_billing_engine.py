"""The plugin as a user meets it: installed, found through its entry point by an ordinary
``Engine``, its actions run by a ``Worker`` in the example workflow on an SQLite file.

(ledgerflow's planned testing kit, ``ledgerflow.testing``, will shorten the engine set-up
below to a fixture.)
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from ledgerflow import Engine, Worker
from ledgerflow.plugins import DISABLE_ENV

import ledgerflow_billing
from ledgerflow_billing.metrics import metrics
from ledgerflow_billing.tables import credit_notes

WORKFLOW = Path(__file__).resolve().parents[1] / "examples" / "invoice_billing.yaml"
TENANT = "billing-engine-test"


@pytest.fixture
def billing_engine(tmp_path: Path) -> Iterator[Engine]:
    """An engine on a fresh SQLite file with its schema, the ``credit_notes`` table and the
    InvoiceBilling workflow; its plugins are whatever is installed, as for any user."""
    engine = Engine(f"sqlite:///{tmp_path}/ledger.db")
    try:
        engine.store.upgrade()
        ledgerflow_billing.create_tables(engine)
        engine.register(WORKFLOW)
        yield engine
    finally:
        engine.close()


def run(engine: Engine) -> None:
    Worker(engine, poll_interval=0.05).run(until_idle=True)


def history(engine: Engine, execution_id: str) -> list[Any]:
    return [entry.record for entry in engine.history(execution_id, tenant=TENANT)]


def test_the_installed_distribution_declares_the_entry_point() -> None:
    [entry] = [
        e for e in importlib.metadata.entry_points(group="ledgerflow") if e.name == "billing"
    ]
    assert entry.value == "ledgerflow_billing.plugin"
    assert entry.dist is not None
    assert (entry.dist.metadata["Name"], entry.dist.version) == ("ledgerflow-billing", "0.1.0")


def test_an_engine_finds_the_plugin_without_being_told(billing_engine: Engine) -> None:
    [info] = [i for i in billing_engine.plugins.describe() if i.name == "billing"]
    assert (info.source, info.distribution, info.version) == (
        "entry point",
        "ledgerflow-billing",
        "0.1.0",
    )
    assert info.errors == ()
    assert info.registered == {"actions": ("billing.compute_tax", "billing.issue_credit_note")}
    assert set(info.hooks) == {
        "ledgerflow_execution_completed",
        "ledgerflow_register_actions",
        "ledgerflow_retry_policy",
        "ledgerflow_run_step",
    }
    assert "billing.compute_tax" in billing_engine.registry


def test_invoice_tax_and_credit_notes_end_to_end(billing_engine: Engine) -> None:
    completed = metrics.snapshot().completed.get((TENANT, "closed"), 0)
    engine = billing_engine
    execution_id = engine.create_execution("InvoiceBilling", tenant=TENANT)
    engine.enqueue_event(
        execution_id,
        "Issue",
        tenant=TENANT,
        payload={"invoice": {"id": "INV-7", "net": 250.5, "country": "NL"}},
    )
    engine.enqueue_event(
        execution_id, "Credit", tenant=TENANT, payload={"amount": 50, "reason": "late"}
    )
    engine.enqueue_event(
        execution_id, "Credit", tenant=TENANT, payload={"amount": 20.25, "reason": "damaged"}
    )
    engine.enqueue_event(execution_id, "Close", tenant=TENANT)
    run(engine)
    run(engine)  # nothing left: no step runs twice

    found = engine.get_execution(execution_id, tenant=TENANT)
    assert (found.state, found.status.value) == ("closed", "completed")
    # 250.50 * 21% = 52.605 → 52.61
    tax = {"country": "NL", "rate": 0.21, "net": 250.5, "tax": 52.61, "gross": 303.11}
    assert found.context["tax"] == tax
    results = {
        (r.event_seq, r.step_id): r.result
        for r in history(engine, execution_id)
        if r.kind == "step_succeeded"
    }
    assert [v for (_, step), v in sorted(results.items()) if step == "credit_note"] == [
        {
            "credit_note": "CN-000001",
            "number": 1,
            "invoice_id": "INV-7",
            "amount": 50.0,
            "currency": "EUR",
            "credited_total": 50.0,
            "remaining": 253.11,
        },
        {
            "credit_note": "CN-000002",
            "number": 2,
            "invoice_id": "INV-7",
            "amount": 20.25,
            "currency": "EUR",
            "credited_total": 70.25,
            "remaining": 232.86,
        },
    ]
    with engine.store.read() as conn:
        rows = conn.execute(
            sa.select(credit_notes.c.number, credit_notes.c.amount, credit_notes.c.reason)
            .where(credit_notes.c.tenant == TENANT)
            .order_by(credit_notes.c.number)
        ).all()
    assert rows == [(1, 50.0, "late"), (2, 20.25, "damaged")]
    assert metrics.snapshot().completed[TENANT, "closed"] == completed + 1
    timed = metrics.snapshot().actions
    assert timed["billing.compute_tax"].calls >= 1
    assert timed["billing.issue_credit_note"].calls >= 2


def test_a_credit_above_the_invoice_fails_once_without_retries(billing_engine: Engine) -> None:
    engine = billing_engine
    execution_id = engine.create_execution("InvoiceBilling", tenant=TENANT)
    engine.enqueue_event(
        execution_id,
        "Issue",
        tenant=TENANT,
        payload={"invoice": {"id": "INV-8", "net": 10, "country": "DE"}},
    )
    engine.enqueue_event(
        execution_id, "Credit", tenant=TENANT, payload={"amount": 11.91, "reason": "too much"}
    )
    run(engine)
    found = engine.get_execution(execution_id, tenant=TENANT)
    assert found.status.value == "failed"
    [failed] = [r for r in history(engine, execution_id) if r.kind == "step_failed"]
    # the step's strategy allows 3 attempts; the plugin's retry policy refused a second
    assert failed.attempts == 1
    assert failed.error.startswith("CreditExceedsInvoiceError: invoice INV-8 (tenant")
    assert "at most 11.90 can still be credited" in failed.error
    with engine.store.read() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(credit_notes)) == 0


def test_without_its_table_the_credit_note_step_fails_and_says_why(tmp_path: Path) -> None:
    engine = Engine(f"sqlite:///{tmp_path}/ledger.db")
    try:
        engine.store.upgrade()
        engine.register(WORKFLOW)  # no create_tables
        execution_id = engine.create_execution("InvoiceBilling", tenant=TENANT)
        engine.enqueue_event(
            execution_id,
            "Issue",
            tenant=TENANT,
            payload={"invoice": {"id": "INV-9", "net": 10, "country": "DE"}},
        )
        engine.enqueue_event(
            execution_id, "Credit", tenant=TENANT, payload={"amount": 1, "reason": "x"}
        )
        run(engine)
        [failed] = [r for r in history(engine, execution_id) if r.kind == "step_failed"]
        assert "no such table: credit_notes" in failed.error
    finally:
        engine.close()


def test_disabled_by_name_the_plugin_registers_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DISABLE_ENV, "billing")
    engine = Engine(f"sqlite:///{tmp_path}/ledger.db")
    try:
        assert "billing.compute_tax" not in engine.registry
        [info] = [i for i in engine.plugins.describe() if i.name == "billing"]
        assert info.disabled
        assert info.distribution == "ledgerflow-billing"
    finally:
        engine.close()
