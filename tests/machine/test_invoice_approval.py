"""The state machine on the shipped InvoiceApproval example."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

import ledgerflow
from ledgerflow import (
    Accepted,
    Definition,
    Event,
    EventReceived,
    LedgerError,
    Rejected,
    RejectReason,
    Status,
    machine,
)

INVOICE = {"invoice": {"id": "inv-1", "total": 120, "customer_id": "c-9"}}


def create(total: float = 120, role: str = "clerk") -> Event:
    payload: dict[str, Any] = {"invoice": {**INVOICE["invoice"], "total": total}}
    return Event(name="CreateInvoice", role=role, payload=payload)


def approve(role: str = "manager") -> Event:
    return Event(name="ApproveInvoice", role=role, payload={"approved_by": "ann"})


def state_after(definition: Definition, *events: Event, **context: Any) -> ledgerflow.State:
    return ledgerflow.fold(definition, ledgerflow.simulate(definition, events, context=context))


def test_create_then_approve_completes(invoice: Definition) -> None:
    ledger = ledgerflow.simulate(invoice, [create(), approve()])
    state = ledgerflow.fold(invoice, ledger)
    assert state.name == "approved"
    assert state.status is Status.COMPLETED
    assert state.context["approved_by"] == "ann"
    assert state.context["invoice"]["id"] == "inv-1"
    assert state.context["approval_limit"] == 10000
    kinds = [r.kind for r in ledger]
    assert kinds == [
        "execution_started",
        "event_received",
        "transition_applied",
        "step_succeeded",
        "step_succeeded",
        "event_received",
        "transition_applied",
        "step_succeeded",
        "step_succeeded",
        "step_succeeded",
        "step_succeeded",
    ]
    assert [r.seq for r in ledger] == list(range(1, len(ledger) + 1))
    assert state.decided_seq == 6


def test_steps_come_dependencies_first_in_written_order(invoice: Definition) -> None:
    state = state_after(invoice, create())
    decision = ledgerflow.decide(invoice, state, approve())
    assert isinstance(decision, Accepted)
    assert [s.id for s in decision.steps] == [
        "mark_approved",
        "schedule_payment",
        "notify_clerk",
        "mark_payment_scheduled",
    ]


def test_approval_forks_after_mark_approved_and_joins_before_mark_payment_scheduled(
    invoice: Definition,
) -> None:
    for transition in ("approve", "approve_escalated"):
        steps = next(t for t in invoice.workflow.transitions if t.name == transition).steps
        assert {s.id: set(s.depends_on) for s in steps} == {
            "mark_approved": set(),
            "schedule_payment": {"mark_approved"},
            "notify_clerk": {"mark_approved"},
            "mark_payment_scheduled": {"schedule_payment", "notify_clerk"},
        }
        by_id = {s.id: s for s in steps}
        assert by_id["schedule_payment"].on_error.strategy == "compensate"
        assert by_id["mark_approved"].compensate is not None


def test_a_total_over_the_limit_is_not_approved(invoice: Definition) -> None:
    state = state_after(invoice, create(total=20000))
    decision = ledgerflow.decide(invoice, state, approve())
    assert decision == Rejected(
        reason=RejectReason.CONDITION_FALSE,
        detail="transition approve: condition "
        "'context.invoice.total <= context.approval_limit' is false",
    )


def test_the_limit_comes_from_the_context_and_compares_int_with_double(invoice: Definition) -> None:
    state = state_after(invoice, create(total=999.5), approval_limit=1000)
    assert isinstance(ledgerflow.decide(invoice, state, approve()), Accepted)
    state = state_after(invoice, create(total=1000.5), approval_limit=1000)
    assert not ledgerflow.decide(invoice, state, approve()).accepted


def test_the_role_checked_is_the_senders(invoice: Definition) -> None:
    state = state_after(invoice, create())
    decision = ledgerflow.decide(invoice, state, approve(role="clerk"))
    assert isinstance(decision, Rejected)
    assert decision.reason is RejectReason.ROLE_NOT_PERMITTED
    assert "'clerk'" in decision.detail
    no_role = ledgerflow.decide(
        invoice, state, Event(name="ApproveInvoice", payload={"approved_by": "x"})
    )
    assert isinstance(no_role, Rejected)
    assert no_role.reason is RejectReason.ROLE_NOT_PERMITTED


def test_timer_events_skip_the_role_check(invoice: Definition) -> None:
    state = state_after(invoice, create())
    fired = EventReceived(seq=state.seq + 1, name="EscalationDue", origin="timer")
    decision = ledgerflow.decide(invoice, state, fired)
    assert isinstance(decision, Accepted)
    assert decision.target == "escalated"
    assert invoice.timers("pending_approval") == (("EscalationDue", 172800.0),)
    assert invoice.timers("draft") == ()


def test_each_rejection_reason(invoice: Definition) -> None:
    start = state_after(invoice)
    unknown = ledgerflow.decide(invoice, start, Event(name="PayInvoice"))
    assert isinstance(unknown, Rejected)
    assert unknown.reason is RejectReason.UNKNOWN_EVENT
    no_transition = ledgerflow.decide(invoice, start, approve())
    assert isinstance(no_transition, Rejected)
    assert no_transition.reason is RejectReason.NO_TRANSITION
    assert no_transition.detail == "no transition leaves 'draft' on 'ApproveInvoice'"
    bad = ledgerflow.decide(
        invoice,
        start,
        Event(name="CreateInvoice", role="clerk", payload={"invoice": {"id": "", "total": 0}}),
    )
    assert isinstance(bad, Rejected)
    assert bad.reason is RejectReason.PAYLOAD_INVALID
    assert "payload.invoice: 'customer_id' is a required property" in bad.detail
    assert "payload.invoice.total: 0 is less than or equal to the minimum of 0" in bad.detail
    finished = state_after(invoice, create(), approve())
    done = ledgerflow.decide(invoice, finished, approve())
    assert isinstance(done, Rejected)
    assert done.reason is RejectReason.EXECUTION_FINISHED


def test_an_expression_error_rejects_with_its_reason() -> None:
    definition = ledgerflow.loads(
        """
        {"name": "W", "version": 1, "initial_state": "a", "states": ["a", "b"],
         "terminal_states": ["b"],
         "transitions": [{"from": "a", "to": "b", "on": "Go", "condition": "payload.n > 1"},
                         {"from": "a", "to": "b", "on": "Set",
                          "set": {"x": {"expr": "1 / payload.n"}}}]}
        """,
        "json",
    )
    state = ledgerflow.fold(definition, [ledgerflow.start(definition)])
    missing = ledgerflow.decide(definition, state, Event(name="Go"))
    assert isinstance(missing, Rejected)
    assert missing.reason is RejectReason.EXPRESSION_ERROR
    assert "payload.n > 1" in missing.detail
    zero = ledgerflow.decide(definition, state, Event(name="Set", payload={"n": 0}))
    assert isinstance(zero, Rejected)
    assert zero.reason is RejectReason.EXPRESSION_ERROR
    assert "divide by zero" in zero.detail
    not_bool = ledgerflow.compile_workflow(
        attrs.evolve(
            definition.workflow,
            transitions=(
                attrs.evolve(definition.workflow.transitions[0], condition="payload.n"),
                definition.workflow.transitions[1],
            ),
        )
    )
    wrong = ledgerflow.decide(not_bool, state, Event(name="Go", payload={"n": 3}))
    assert isinstance(wrong, Rejected)
    assert "must be true or false, not an integer" in wrong.detail


def test_a_rejected_event_changes_only_the_decided_seq(invoice: Definition) -> None:
    ledger = ledgerflow.simulate(invoice, [create(), approve(role="clerk")])
    before = ledgerflow.fold(invoice, ledger[:5])
    after = ledgerflow.fold(invoice, ledger)
    assert ledger[-1].kind == "event_rejected"
    assert attrs.evolve(after, seq=before.seq, decided_seq=before.decided_seq) == before


def test_fold_refuses_a_broken_ledger(invoice: Definition) -> None:
    ledger = ledgerflow.simulate(invoice, [create()])
    with pytest.raises(LedgerError, match="expected 3"):
        ledgerflow.fold(invoice, [ledger[0], ledger[1], ledger[3]])
    with pytest.raises(LedgerError, match="starts with execution_started"):
        ledgerflow.fold(invoice, ledger[1:])
    with pytest.raises(LedgerError, match="a second execution_started"):
        ledgerflow.fold(invoice, [ledger[0], attrs.evolve(ledger[0], seq=2)])
    applied = ledger[2]
    assert isinstance(applied, ledgerflow.TransitionApplied)
    wrong = attrs.evolve(applied, source="pending_approval")
    with pytest.raises(LedgerError, match="while in 'draft'"):
        ledgerflow.fold(invoice, [ledger[0], ledger[1], wrong])
    with pytest.raises(LedgerError, match="empty ledger"):
        ledgerflow.fold(invoice, [])
    other = ledgerflow.compile_workflow(attrs.evolve(invoice.workflow, version=2))
    with pytest.raises(LedgerError, match="folded with InvoiceApproval v2"):
        ledgerflow.fold(other, ledger)


def test_an_execution_failed_record_finishes_the_execution(invoice: Definition) -> None:
    ledger = ledgerflow.simulate(invoice, [create()])
    state = ledgerflow.fold(invoice, ledger)
    failed = machine.apply(
        invoice, state, ledgerflow.ExecutionFailed(seq=state.seq + 1, event_seq=2, reason="boom")
    )
    assert failed.status is Status.FAILED
    decision = ledgerflow.decide(invoice, failed, approve())
    assert isinstance(decision, Rejected)
    assert decision.reason is RejectReason.EXECUTION_FINISHED
