"""``replay_divergence``: where a ledger would have gone differently under another version.
Pure: ledgers are built with the state machine alone."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

import ledgerflow
from ledgerflow import machine
from ledgerflow.model import Event, EventReceived, ExecutionMigrated, Record, Transition
from ledgerflow.versioning import Divergence, DivergenceKind, replay_divergence
from versioning.parcel_workflows import parcel

V1, V2 = parcel(1), parcel(2)


def ledger_of(definition: ledgerflow.Definition, *events: Event) -> list[Record]:
    return machine.simulate(definition, events)


def variant(version: int, **changes: Any) -> ledgerflow.Definition:
    """Parcel v2 renumbered and changed."""
    return ledgerflow.compile_workflow(attrs.evolve(V2.workflow, version=version, **changes))


def transitions(rename: dict[str, dict[str, Any]]) -> tuple[Transition, ...]:
    return tuple(
        attrs.evolve(t, **rename[t.name]) if t.name in rename else t
        for t in V2.workflow.transitions
    )


PACK_10 = Event(name="Pack", payload={"weight": 10})
PACK_25 = Event(name="Pack", payload={"weight": 25})


def test_a_ledger_v2_decides_alike_does_not_diverge() -> None:
    ledger = ledger_of(V1, PACK_10, Event(name="Ship", role="clerk"), Event(name="Deliver"))
    assert machine.fold(V1, ledger).name == "delivered"
    assert replay_divergence(ledger, V1, V2) is None


def test_an_event_v2_would_reject_is_a_divergence() -> None:
    ledger = ledger_of(V1, PACK_25, Event(name="Ship", role="clerk"))
    assert machine.fold(V1, ledger).name == "shipped"
    found = replay_divergence(ledger, V1, V2)
    assert found is not None
    assert (found.seq, found.event, found.kind) == (5, "Ship", DivergenceKind.REJECTED)
    assert found.detail == (
        "v1 applied it: packed -> shipped; v2 would reject it (condition_false: transition "
        "ship: condition 'context.weight <= 20' is false)"
    )


def test_an_event_v2_would_apply_is_a_divergence() -> None:
    ledger = ledger_of(V1, PACK_10, Event(name="Ship", role="courier"))
    assert machine.fold(V1, ledger).name == "packed"  # v1 lets only clerks ship
    assert replay_divergence(ledger, V1, V2) == Divergence(
        seq=5,
        event="Ship",
        kind=DivergenceKind.APPLIED,
        detail="v1 rejected it (role_not_permitted); v2 would apply it: packed -> shipped (ship)",
    )


def test_another_target_or_context_is_a_divergence() -> None:
    ledger = ledger_of(V1, PACK_10, Event(name="Lose"))
    elsewhere = variant(5, transitions=transitions({"lose": {"target": "delivered"}}))
    found = replay_divergence(ledger, V1, elsewhere)
    assert found is not None
    assert (found.seq, found.kind) == (5, DivergenceKind.DIFFERENT_TARGET)
    assert found.detail == "v1 moved to 'lost'; v5 would move to 'delivered'"
    doubled = variant(
        6, transitions=transitions({"pack": {"set": {"weight": {"expr": "payload.weight * 2"}}}})
    )
    found = replay_divergence(ledger, V1, doubled)
    assert found is not None
    assert (found.seq, found.event, found.kind) == (2, "Pack", DivergenceKind.DIFFERENT_CONTEXT)
    assert found.detail == "v6 would set the context differently: weight"


def test_another_initial_state_is_a_divergence_at_the_start() -> None:
    unpack = Transition(name="unpack", source=("packed",), target="received", on="Unpack")
    elsewhere = variant(7, initial_state="packed", transitions=(*V2.workflow.transitions, unpack))
    found = replay_divergence(ledger_of(V1, PACK_10), V1, elsewhere)
    assert found == Divergence(
        seq=1,
        event=None,
        kind=DivergenceKind.INITIAL_STATE,
        detail="v7 starts in 'packed', the ledger started in 'received'",
    )


def test_a_migrated_ledger_is_replayed_from_its_migration() -> None:
    # held under v1, migrated to a v2 that still has holding, replayed under a v3 without it
    keeps_holding = ledgerflow.compile_workflow(attrs.evolve(V1.workflow, version=2))
    ledger = ledger_of(V1, PACK_25, Event(name="Hold"))
    held = machine.fold(V1, ledger)
    ledger.append(ExecutionMigrated(seq=held.seq + 1, from_version=1, to_version=2, state="held"))
    versions = {1: V1, 2: keeps_holding}.__getitem__
    without = variant(3)
    found = replay_divergence(ledger, keeps_holding, without, versions=versions)
    assert found == Divergence(
        seq=held.seq + 1,
        event=None,
        kind=DivergenceKind.STATE_MISSING,
        detail="state 'held' does not exist in Parcel v3",
    )
    # what came before the migration is not judged by the new version: shipping 25 kg diverges
    # under v3, but only the stretch on v2 (the delivery) is replayed
    ledger = ledger_of(V1, PACK_25, Event(name="Ship", role="clerk"))
    assert replay_divergence(ledger, V1, without) is not None
    shipped = machine.fold(V1, ledger)
    ledger.append(
        ExecutionMigrated(seq=shipped.seq + 1, from_version=1, to_version=2, state="shipped")
    )
    on_v2 = machine.fold(V1, ledger, versions=versions)
    deliver = EventReceived(seq=on_v2.seq + 1, name="Deliver")
    decided = machine.decide(keeps_holding, on_v2, deliver)
    ledger += [deliver, decided.record(seq=on_v2.seq + 2, event_seq=deliver.seq)]
    assert machine.fold(V1, ledger, versions=versions).name == "delivered"
    assert replay_divergence(ledger, keeps_holding, without, versions=versions) is None
    elsewhere = variant(4, transitions=transitions({"deliver": {"source": ("returned",)}}))
    found = replay_divergence(ledger, keeps_holding, elsewhere, versions=versions)
    assert found is not None
    assert (found.seq, found.kind) == (deliver.seq, DivergenceKind.REJECTED)


def test_a_ledger_must_start_with_its_start() -> None:
    ledger = ledger_of(V1, PACK_10)
    with pytest.raises(ledgerflow.LedgerError, match="starts with execution_started"):
        replay_divergence(ledger[1:], V1, V2)
    with pytest.raises(ledgerflow.LedgerError, match="starts with execution_started"):
        replay_divergence([], V1, V2)
