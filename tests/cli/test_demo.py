"""``ledgerflow demo``: the InvoiceApproval example end to end, as a user runs it after
``pip install``: a real subprocess, no configuration, nothing left behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

STEPS = ["mark_approved", "schedule_payment", "notify_clerk", "mark_payment_scheduled"]


def demo(*args: str, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "ledgerflow", "demo", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # the notifications are shown, not logged over the output
    return result.stdout


@pytest.fixture(scope="module")
def as_json() -> Any:
    """The demo's ``--json`` output, parsed: it must be exactly one JSON document."""
    return json.loads(demo("--json"))


def test_the_demo_runs_end_to_end_with_no_configuration(tmp_path: Path) -> None:
    out = demo(cwd=tmp_path)
    assert "final state: approved (completed)" in out
    assert "replaying the ledgers from zero gives the same states: yes" in out
    assert "transition_applied  pending_approval -> approved (approve)" in out
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def test_the_demo_prints_the_rows_and_the_notifications_after_the_ledger() -> None:
    out = demo()
    ledger, _, rest = out.partition("\ninvoices (tenant acme):\n")
    assert "step_succeeded      mark_payment_scheduled" in ledger
    invoices, _, rest = rest.partition("\npayments (tenant acme):\n")
    assert invoices.splitlines()[0].split() == [
        "id",
        "customer_id",
        "total",
        "currency",
        "status",
        "approved_by",
        "rejected_by",
        "rejection_reason",
    ]
    assert invoices.splitlines()[1].split() == [
        "INV-1001",
        "C-42",
        "1250.0",
        "EUR",
        "payment_scheduled",
        "maria",
    ]
    payments, _, notes = rest.partition("\nnotifications sent (log notifier):\n")
    assert invoices.splitlines()[2].split() == [
        "INV-1002",
        "C-7",
        "980.0",
        "EUR",
        "payment_scheduled",
        "dmitri",
    ]
    assert [line.split() for line in payments.splitlines()] == [
        ["invoice_id", "amount", "currency", "status"],
        ["INV-1001", "1250.0", "EUR", "scheduled"],
        ["INV-1002", "980.0", "EUR", "scheduled"],
    ]
    assert notes.splitlines() == [
        "  [approvers] Invoice INV-1001 awaits approval",
        "  [clerks] Invoice INV-1001 approved by maria",
        "  [approvers] Invoice INV-1002 awaits approval",
        "  [directors] Invoice INV-1002 has waited 48 hours",
        "  [clerks] Invoice INV-1002 approved by dmitri",
    ]


def test_the_demo_writes_two_invoices_and_two_payments_for_its_tenant(as_json: Any) -> None:
    late = {"tenant": "acme", "id": "INV-1002", "customer_id": "C-7", "total": 980.0}
    assert as_json["tables"]["invoices"][1] == {
        **late,
        "currency": "EUR",
        "status": "payment_scheduled",
        "approved_by": "dmitri",
        "rejected_by": None,
        "rejection_reason": None,
    }
    assert as_json["tables"]["payments"][1]["invoice_id"] == "INV-1002"
    first = {name: rows[:1] for name, rows in as_json["tables"].items()}
    assert first == {
        "invoices": [
            {
                "tenant": "acme",
                "id": "INV-1001",
                "customer_id": "C-42",
                "total": 1250.0,
                "currency": "EUR",
                "status": "payment_scheduled",
                "approved_by": "maria",
                "rejected_by": None,
                "rejection_reason": None,
            }
        ],
        "payments": [
            {
                "tenant": "acme",
                "invoice_id": "INV-1001",
                "amount": 1250.0,
                "currency": "EUR",
                "status": "scheduled",
            }
        ],
    }


def test_the_demo_join_runs_after_both_branches(as_json: Any) -> None:
    succeeded = [e for e in as_json["ledger"] if e["kind"] == "step_succeeded"]
    approval = [e["record"]["step_id"] for e in succeeded[2:]]
    assert approval[0] == "mark_approved"
    assert sorted(approval[1:3]) == ["notify_clerk", "schedule_payment"]
    assert approval[3] == "mark_payment_scheduled"
    by_id = {e["record"]["step_id"]: e for e in succeeded}
    join = by_id["mark_payment_scheduled"]
    for branch in ("schedule_payment", "notify_clerk"):
        assert by_id[branch]["seq"] < join["seq"]
        ended = by_id[branch]["record"]["started_at"] + by_id[branch]["record"]["duration"]
        assert join["record"]["started_at"] >= ended - 0.01


def test_the_demo_json_holds_the_ledger_execution_tables_and_notifications(as_json: Any) -> None:
    assert set(as_json) == {
        "ledger",
        "execution",
        "escalation",
        "replay_matches_projection",
        "tables",
        "notifications",
    }
    assert as_json["execution"]["state"] == "approved"
    assert as_json["execution"]["status"] == "completed"
    assert as_json["replay_matches_projection"] is True
    assert [e["seq"] for e in as_json["ledger"]] == list(range(1, len(as_json["ledger"]) + 1))
    succeeded = [e["record"]["step_id"] for e in as_json["ledger"] if e["kind"] == "step_succeeded"]
    assert sorted(succeeded) == sorted(["record_invoice", "notify_approvers", *STEPS])
    notes = as_json["notifications"]
    assert [(n["channel"], n["message"]) for n in notes[:2]] == [
        ("approvers", "Invoice INV-1001 awaits approval"),
        ("clerks", "Invoice INV-1001 approved by maria"),
    ]
    # each was sent under its step's idempotency key: execution:event:step
    execution_id = as_json["execution"]["id"]
    keys = [n["idempotency_key"].split(":") for n in notes[:2]]
    assert [(k[0], k[2]) for k in keys] == [
        (execution_id, "notify_approvers"),
        (execution_id, "notify_clerk"),
    ]


def test_the_demo_escalates_the_undecided_invoice_after_48_hours_of_skipped_clock(
    as_json: Any,
) -> None:
    escalation = as_json["escalation"]
    assert escalation["state_after_48_hours"] == "escalated"
    received = [e for e in escalation["ledger"] if e["kind"] == "event_received"]
    assert [(e["record"]["name"], e["record"]["origin"]) for e in received] == [
        ("CreateInvoice", "client"),
        ("EscalationDue", "timer"),
        ("ApproveInvoice", "client"),
    ]
    moves = [
        (e["record"]["source"], e["record"]["target"])
        for e in escalation["ledger"]
        if e["kind"] == "transition_applied"
    ]
    assert moves == [
        ("draft", "pending_approval"),
        ("pending_approval", "escalated"),
        ("escalated", "approved"),
    ]
    assert escalation["execution"]["status"] == "completed"
    notes = [(n["channel"], n["message"]) for n in as_json["notifications"][2:]]
    assert ("directors", "Invoice INV-1002 has waited 48 hours") in notes
