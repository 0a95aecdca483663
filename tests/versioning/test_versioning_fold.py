"""Folding a migrated ledger: the records before an ``execution_migrated`` under the old
version, the rest under the new one, the same from zero and from any split."""

from __future__ import annotations

import attrs
import pytest

import ledgerflow
from ledgerflow import machine
from ledgerflow.model import Event, EventReceived, ExecutionMigrated, Record, State
from versioning.parcel_workflows import parcel

V1, V2 = parcel(1), parcel(2)
VERSIONS = {1: V1, 2: V2}


def by_number(version: int) -> ledgerflow.Definition:
    return VERSIONS[version]


def carry_on(definition: ledgerflow.Definition, ledger: list[Record], event: Event) -> None:
    """Append ``event`` and its decision under ``definition`` to ``ledger``, as the engine
    would with every step succeeding."""
    state = machine.fold(definition, ledger, versions=by_number)
    received = EventReceived(
        seq=state.seq + 1, name=event.name, payload=event.payload, role=event.role
    )
    decision = machine.decide(definition, state, received)
    ledger += [received, decision.record(seq=state.seq + 2, event_seq=received.seq)]


def migrated_ledger() -> list[Record]:
    """Packed under v1 (10 kg), migrated to v2, then shipped by a courier, which only v2
    permits."""
    ledger = machine.simulate(V1, [Event(name="Pack", payload={"weight": 10})])
    state = machine.fold(V1, ledger)
    ledger.append(
        ExecutionMigrated(
            seq=state.seq + 1, from_version=1, to_version=2, state="packed", requested_by="ops"
        )
    )
    carry_on(V2, ledger, Event(name="Ship", role="courier"))
    return ledger


def test_a_migrated_ledger_folds_under_each_version_in_turn() -> None:
    ledger = migrated_ledger()
    state = machine.fold(V1, ledger, versions=by_number)
    assert (state.version, state.name, state.seq) == (2, "shipped", len(ledger))
    assert machine.fold(V2, ledger, versions=by_number) == state
    before = machine.fold(V1, ledger[:4])
    assert (before.version, before.name) == (1, "packed")


def test_without_the_other_versions_a_migrated_ledger_cannot_be_folded() -> None:
    ledger = migrated_ledger()
    with pytest.raises(
        ledgerflow.LedgerError,
        match=r"seq 5: a state of Parcel v2 folded with Parcel v1 .*versions=",
    ):
        machine.fold(V1, ledger)
    with pytest.raises(ledgerflow.LedgerError, match="ledger of Parcel v1 folded with Parcel v2"):
        machine.fold(V2, ledger)


@pytest.mark.parametrize("split", range(1, 8))
def test_folding_from_any_split_gives_the_same_state(split: int) -> None:
    ledger = migrated_ledger()
    assert len(ledger) == 7
    whole = machine.fold(V1, ledger, versions=by_number)
    head = machine.fold(V1, ledger[:split], versions=by_number)
    # a snapshot taken on either version, resumed with either definition at hand
    for definition in (V1, V2):
        assert machine.fold(definition, ledger[split:], head, versions=by_number) == whole


def test_a_migration_record_must_follow_the_state_it_leaves() -> None:
    ledger = machine.simulate(V1, [Event(name="Pack", payload={"weight": 10})])
    packed = machine.fold(V1, ledger)
    seq = packed.seq + 1
    with pytest.raises(ledgerflow.LedgerError, match="folded with Parcel v1"):
        machine.apply(
            V1, packed, ExecutionMigrated(seq=seq, from_version=1, to_version=2, state="packed")
        )
    with pytest.raises(ledgerflow.LedgerError, match="a migration from v1 in 'received'"):
        machine.apply(
            V2, packed, ExecutionMigrated(seq=seq, from_version=1, to_version=2, state="received")
        )
    held = State(workflow="Parcel", version=1, name="held", seq=packed.seq)
    with pytest.raises(ledgerflow.LedgerError, match="v2, which has no state 'held'"):
        machine.apply(
            V2, held, ExecutionMigrated(seq=seq, from_version=1, to_version=2, state="held")
        )
    moved = machine.apply(
        V2, packed, ExecutionMigrated(seq=seq, from_version=1, to_version=2, state="packed")
    )
    assert moved == attrs.evolve(packed, version=2, seq=seq)


def test_a_state_is_never_folded_with_another_versions_definition() -> None:
    ledger = migrated_ledger()
    on_v2 = machine.fold(V1, ledger[:5], versions=by_number)
    assert on_v2.version == 2
    with pytest.raises(ledgerflow.LedgerError, match="a state of Parcel v2 folded with Parcel v1"):
        machine.apply(V1, on_v2, ledger[5])
