"""The plugin as a user meets it: installed, found through its entry point by an ordinary
engine, its actions run in the example workflow.

The engine is ledgerflow's testing kit's: its pytest plugin gives each test a
``ledgerflow_harness`` (a real engine on a fresh store) with the workflow and the tables the
two fixtures below name. ``pytest --ledgerflow-db postgresql://...`` runs the same tests on
PostgreSQL."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from ledgerflow import Engine
from ledgerflow.plugins import DISABLE_ENV
from ledgerflow.store import ALL_TENANTS
from ledgerflow.testing import Harness

import ledgerflow_billing
from ledgerflow_billing.metrics import metrics
from ledgerflow_billing.tables import credit_notes

WORKFLOW = Path(__file__).resolve().parents[1] / "examples" / "invoice_billing.yaml"


@pytest.fixture
def ledgerflow_definitions() -> list[Path]:
    """Every harness registers the InvoiceBilling example workflow..."""
    return [WORKFLOW]


@pytest.fixture
def ledgerflow_setup() -> Callable[[Engine], None]:
    """...after creating the ``credit_notes`` table, as an application's setup does."""
    return ledgerflow_billing.create_tables


def history(harness: Harness, execution_id: str) -> list[Any]:
    return harness.ledger(execution_id)


def test_the_installed_distribution_declares_the_entry_point() -> None:
    [entry] = [
        e for e in importlib.metadata.entry_points(group="ledgerflow") if e.name == "billing"
    ]
    assert entry.value == "ledgerflow_billing.plugin"
    assert entry.dist is not None
    assert (entry.dist.metadata["Name"], entry.dist.version) == ("ledgerflow-billing", "0.1.0")


def test_an_engine_finds_the_plugin_without_being_told(ledgerflow_harness: Harness) -> None:
    engine = ledgerflow_harness.engine
    [info] = [i for i in engine.plugins.describe() if i.name == "billing"]
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
    assert "billing.compute_tax" in engine.registry


def test_invoice_tax_and_credit_notes_end_to_end(ledgerflow_harness: Harness) -> None:
    harness = ledgerflow_harness
    tenant = harness.tenant
    completed = metrics.snapshot().completed.get((tenant, "closed"), 0)
    x = harness.start()
    harness.send(x, "Issue", {"invoice": {"id": "INV-7", "net": 250.5, "country": "NL"}})
    harness.send(x, "Credit", {"amount": 50, "reason": "late"})
    harness.send(x, "Credit", {"amount": 20.25, "reason": "damaged"})
    harness.send(x, "Close")
    calls = len(harness.calls)
    harness.redeliver(x)  # nothing left: no step runs twice
    assert len(harness.calls) == calls
    harness.check(x)

    found = harness.execution(x)
    assert (found.state, found.status.value) == ("closed", "completed")
    # 250.50 * 21% = 52.605 → 52.61
    tax = {"country": "NL", "rate": 0.21, "net": 250.5, "tax": 52.61, "gross": 303.11}
    assert found.context["tax"] == tax
    results = {
        (r.event_seq, r.step_id): r.result
        for r in history(harness, x)
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
    with harness.store.read(tenant=ALL_TENANTS) as conn:
        rows = conn.execute(
            sa.select(credit_notes.c.number, credit_notes.c.amount, credit_notes.c.reason)
            .where(credit_notes.c.tenant == tenant)
            .order_by(credit_notes.c.number)
        ).all()
    assert rows == [(1, 50.0, "late"), (2, 20.25, "damaged")]
    assert metrics.snapshot().completed[tenant, "closed"] == completed + 1
    timed = metrics.snapshot().actions
    assert timed["billing.compute_tax"].calls >= 1
    assert timed["billing.issue_credit_note"].calls >= 2


def test_a_credit_above_the_invoice_fails_once_without_retries(
    ledgerflow_harness: Harness,
) -> None:
    harness = ledgerflow_harness
    x = harness.start()
    harness.send(x, "Issue", {"invoice": {"id": "INV-8", "net": 10, "country": "DE"}})
    harness.send(x, "Credit", {"amount": 11.91, "reason": "too much"})
    assert harness.execution(x).status.value == "failed"
    [failed] = [r for r in history(harness, x) if r.kind == "step_failed"]
    # the step's strategy allows 3 attempts; the plugin's retry policy refused a second
    assert failed.attempts == 1
    assert [c.outcome for c in harness.calls if c.action == "billing.issue_credit_note"] == [
        "raised"
    ]
    assert failed.error.startswith("CreditExceedsInvoiceError: invoice INV-8 (tenant")
    assert "at most 11.90 can still be credited" in failed.error
    with harness.store.read(tenant=ALL_TENANTS) as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(credit_notes)) == 0


def test_without_its_table_the_credit_note_step_fails_and_says_why() -> None:
    with Harness(WORKFLOW) as harness:  # no create_tables
        x = harness.start()
        harness.send(x, "Issue", {"invoice": {"id": "INV-9", "net": 10, "country": "DE"}})
        harness.send(x, "Credit", {"amount": 1, "reason": "x"})
        [failed] = [r for r in history(harness, x) if r.kind == "step_failed"]
        assert "no such table: credit_notes" in failed.error


def test_disabled_by_name_the_plugin_registers_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DISABLE_ENV, "billing")
    with Harness() as harness:
        assert "billing.compute_tax" not in harness.engine.registry
        [info] = [i for i in harness.engine.plugins.describe() if i.name == "billing"]
        assert info.disabled
        assert info.distribution == "ledgerflow-billing"
