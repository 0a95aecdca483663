"""Properties of the pure state machine, over generated definitions and event sequences."""

from __future__ import annotations

import attrs
from hypothesis import given
from hypothesis import strategies as st

import ledgerflow
from generated_workflows import events, workflows
from ledgerflow import Event, Workflow


@given(workflow=workflows(), sequence=st.lists(events(), max_size=12), data=st.data())
def test_folding_a_prefix_then_the_rest_equals_folding_the_whole(
    workflow: Workflow, sequence: list[Event], data: st.DataObject
) -> None:
    definition = ledgerflow.compile_workflow(workflow)
    ledger = ledgerflow.simulate(definition, sequence, context={"origin": "test"})
    whole = ledgerflow.fold(definition, ledger)
    split = data.draw(st.integers(1, len(ledger)), label="split")
    snapshot = ledgerflow.fold(definition, ledger[:split])
    assert ledgerflow.fold(definition, ledger[split:], snapshot) == whole
    assert whole.seq == len(ledger)


@given(workflow=workflows(), sequence=st.lists(events(), max_size=10), event=events())
def test_decide_is_deterministic(workflow: Workflow, sequence: list[Event], event: Event) -> None:
    definition = ledgerflow.compile_workflow(workflow)
    state = ledgerflow.fold(definition, ledgerflow.simulate(definition, sequence))
    first = ledgerflow.decide(definition, state, event)
    # a fresh, equal definition and state give the same decision
    again = ledgerflow.decide(
        ledgerflow.compile_workflow(workflow), attrs.evolve(state), attrs.evolve(event)
    )
    assert first == again
    assert first == ledgerflow.decide(definition, state, event)


@given(workflow=workflows(), sequence=st.lists(events(), max_size=12))
def test_every_event_is_decided_once_and_in_order(
    workflow: Workflow, sequence: list[Event]
) -> None:
    definition = ledgerflow.compile_workflow(workflow)
    ledger = ledgerflow.simulate(definition, sequence)
    received = [r.seq for r in ledger if isinstance(r, ledgerflow.EventReceived)]
    decided = [
        r.event_seq
        for r in ledger
        if isinstance(r, ledgerflow.TransitionApplied | ledgerflow.EventRejected)
    ]
    assert decided == received
    state = ledgerflow.fold(definition, ledger)
    assert state.decided_seq == (received[-1] if received else 0)
    if state.status is ledgerflow.Status.COMPLETED:
        assert definition.is_terminal(state.name)
