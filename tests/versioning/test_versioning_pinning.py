"""Versions are immutable and executions are pinned: ``latest`` is resolved once, when an
execution is created, and an execution started before a new version finishes on its own."""

from __future__ import annotations

import attrs
import pytest

import ledgerflow
from ledgerflow.engine import Engine
from versioning.parcel_workflows import TENANT, Clock, Parcels, parcel, parcels

__all__ = ["parcels"]  # the fixture: imported for pytest to find


def test_executions_started_before_a_new_version_finish_on_their_own_version(
    db_url: str,
) -> None:
    clock = Clock()
    engine = Engine(db_url, clock=clock)
    try:
        engine.register(parcel(1))
        world = Parcels(engine=engine, clock=clock)
        before = world.start("latest")
        world.send(before, "Pack", payload={"weight": 25})
        world.run()
        engine.register(parcel(2))
        after = world.start("latest")
        assert engine.get_execution(before, tenant=TENANT).version == 1
        assert engine.get_execution(after, tenant=TENANT).version == 2
        world.send(after, "Pack", payload={"weight": 25})
        # v1 ships 25 kg and can hold; v2 does not
        for x in (before, after):
            world.send(x, "Ship", role="clerk")
        world.send(before, "Hold")
        with pytest.raises(ledgerflow.InvalidEventError, match="Parcel v2 has no event 'Hold'"):
            world.send(after, "Hold")
        world.send(before, "Release")
        world.send(before, "Ship", role="clerk")
        world.send(before, "Deliver")
        world.run()
        done = engine.get_execution(before, tenant=TENANT)
        assert (done.version, done.state, done.status) == (1, "delivered", "completed")
        refused = engine.get_execution(after, tenant=TENANT)
        assert (refused.version, refused.state) == (2, "packed")
        ship = [e for e in engine.history(after, tenant=TENANT) if e.kind == "event_received"][1]
        assert (ship.status, ship.outcome) == ("rejected", "condition_false")
        for x in (before, after):
            world.check_replay(x)
    finally:
        engine.close()


def test_latest_is_resolved_when_the_execution_is_created(parcels: Parcels) -> None:
    x = parcels.start("latest")
    assert parcels.engine.get_execution(x, tenant=TENANT).version == 2
    parcels.engine.register(attrs.evolve(parcel(2).workflow, version=3))
    assert parcels.engine.get_execution(x, tenant=TENANT).version == 2
    assert parcels.engine.get_execution(parcels.start("latest"), tenant=TENANT).version == 3
    assert parcels.engine.get_execution(parcels.start(1), tenant=TENANT).version == 1


def test_a_changed_definition_under_a_registered_version_is_refused_and_stores_nothing(
    parcels: Parcels, db_url: str
) -> None:
    engine = parcels.engine
    listed = engine.list_definitions()
    changed = attrs.evolve(parcel(2).workflow, description="something else")
    with pytest.raises(ledgerflow.DefinitionConflictError, match="Parcel v2 is already registered"):
        engine.register(changed)
    assert engine.list_definitions() == listed
    engine.register(parcel(2))  # the same content again is no change
    assert engine.list_definitions() == listed
    fresh = Engine(db_url)  # nothing cached: what the store holds
    try:
        assert fresh.definition("Parcel", 2) == parcel(2)
        assert fresh.definition("Parcel", 2).workflow.description != "something else"
    finally:
        fresh.close()
