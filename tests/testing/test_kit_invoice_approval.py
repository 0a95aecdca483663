"""The kit on the InvoiceApproval example: its app's setup, its tables as the effects, its
promises as invariants; the same workflow with its approval limit forgotten is caught."""

from __future__ import annotations

import time
from typing import Any

import attrs
import hypothesis
import pytest
from hypothesis import HealthCheck, Phase

import invoice_app
import ledgerflow
from ledgerflow import EventReceived, Workflow
from ledgerflow.testing import (
    Crash,
    Harness,
    Observation,
    SimulatedCrash,
    assert_sound,
    check_definition,
    check_workflow,
)


def settings(examples: int, *, shrink: bool = True) -> hypothesis.settings:
    """Reproducible settings; without ``shrink`` the first failure found is reported as it
    is (InvoiceApproval's database steps make each shrinking run slow)."""
    return hypothesis.settings(
        max_examples=examples,
        stateful_step_count=5,
        deadline=None,
        database=None,
        derandomize=True,
        report_multiple_bugs=False,
        suppress_health_check=[HealthCheck.too_slow],
        phases=[Phase.generate, Phase.shrink] if shrink else [Phase.generate],
    )


def rows(harness: Harness) -> Any:
    """The effects: the invoices and payments rows of the harness's tenant."""
    return invoice_app.rows(harness.engine, harness.tenant)


def a_manager_approves_within_the_limit(observed: Observation) -> bool:
    """Only a director, once the invoice is escalated, approves above the limit."""
    return all(
        a.context["invoice"]["total"] <= a.context["approval_limit"]
        for a in observed.applied("approve")
    )


def a_payment_is_scheduled_once_approved(observed: Observation) -> None:
    """An approved invoice has exactly its payment; any other has none."""
    payments = observed.effects["payments"]
    if observed.state.name == "approved":
        invoice = observed.context["invoice"]
        assert [(p["invoice_id"], p["amount"]) for p in payments] == [
            (invoice["id"], float(invoice["total"]))
        ]
    else:
        assert payments == []


def the_invoice_row_follows_the_state(observed: Observation) -> None:
    invoices = observed.effects["invoices"]
    state = observed.state.name
    if state == "draft":
        assert invoices == []
        return
    [row] = invoices
    expected = {"approved": "payment_scheduled"}.get(state, state)
    assert row["status"] == expected, (row["status"], state)


INVARIANTS = [
    a_manager_approves_within_the_limit,
    a_payment_is_scheduled_once_approved,
    the_invoice_row_follows_the_state,
]


def test_invoice_approval_keeps_its_promises_under_faults(invoice: ledgerflow.Definition) -> None:
    started = time.perf_counter()
    check_workflow(
        invoice,
        setup=invoice_app.setup,
        invariants=INVARIANTS,
        effects=rows,
        settings=settings(25),
    )
    print(f"InvoiceApproval: 25 examples in {time.perf_counter() - started:.1f}s")


def without_the_limit(invoice: ledgerflow.Definition) -> Workflow:
    """InvoiceApproval with the approval's condition forgotten (a new name, so that both can
    be registered in one database)."""
    workflow = invoice.workflow
    transitions = tuple(
        attrs.evolve(t, condition=None) if t.name == "approve" else t for t in workflow.transitions
    )
    return attrs.evolve(workflow, name="InvoiceApprovalNoLimit", transitions=transitions)


def test_invoice_approval_without_its_limit_is_caught(invoice: ledgerflow.Definition) -> None:
    started = time.perf_counter()
    with pytest.raises(AssertionError, match="a_manager_approves_within_the_limit") as caught:
        check_workflow(
            without_the_limit(invoice),
            setup=invoice_app.setup,
            invariants=INVARIANTS,
            effects=rows,
            settings=settings(100, shrink=False),
        )
    notes = "\n".join(caught.value.__notes__)
    skipped = ("state.start(", "state.keeps_its_promises(", "state.teardown(", "state = ")
    shown = [
        line
        for line in notes.splitlines()
        if line.startswith("state") and not line.startswith(skipped)
    ]
    print(f"caught in {time.perf_counter() - started:.1f}s with {len(shown)} events")
    print(notes)
    assert 2 <= len(shown) <= 4  # found at once, without shrinking
    assert "state.send(event=CreateInvoice(" in notes
    assert "approve: pending_approval -> approved" in notes


def test_a_crash_while_scheduling_the_payment_leaves_one_payment(
    invoice: ledgerflow.Definition,
) -> None:
    with Harness(invoice, setup=invoice_app.setup) as harness:
        x = harness.start()
        harness.send(
            x,
            "CreateInvoice",
            {"invoice": {"id": "INV-1", "total": 120, "customer_id": "C"}},
            role="clerk",
        )
        # approval's calls: mark_approved, schedule_payment, notify_clerk, ...
        harness.arm(Crash(point="after_effect", call=2))
        with pytest.raises(SimulatedCrash, match="schedule_payment"):
            harness.send(x, "ApproveInvoice", {"approved_by": "m"}, role="manager")
        assert rows(harness)["payments"] == []  # its transaction died with the worker
        harness.recover()
        assert [p["amount"] for p in rows(harness)["payments"]] == [120.0]
        assert rows(harness)["invoices"][0]["status"] == "payment_scheduled"
        harness.check(x)


def test_invoice_approval_is_sound(invoice: ledgerflow.Definition) -> None:
    with Harness(invoice, setup=invoice_app.setup) as harness:
        assert_sound(invoice, actions=harness.engine.registry, depth=4)


def test_its_definition_has_no_problem_without_actions_to_check(
    invoice: ledgerflow.Definition,
) -> None:
    assert check_definition(invoice, depth=3) == []


def test_an_invoice_left_pending_for_48_hours_is_escalated(
    invoice: ledgerflow.Definition,
) -> None:
    with Harness(invoice, setup=invoice_app.setup) as harness:
        x = harness.start()
        harness.send(
            x,
            "CreateInvoice",
            {"invoice": {"id": "INV-2", "total": 20000, "customer_id": "C"}},
            role="clerk",
        )
        harness.advance(48 * 3600 - 1)
        harness.process()
        assert harness.execution(x).state == "pending_approval"
        harness.advance(1)
        harness.process()  # the timer fires, as a worker fires it at its next poll
        assert harness.execution(x).state == "escalated"
        [fired] = [
            e for e in harness.ledger(x) if isinstance(e, EventReceived) and e.origin == "timer"
        ]
        assert fired.name == "EscalationDue"
        assert rows(harness)["invoices"][0]["status"] == "escalated"
        harness.send(x, "ApproveInvoice", {"approved_by": "d"}, role="director")
        assert harness.execution(x).state == "approved"
        harness.check(x)
