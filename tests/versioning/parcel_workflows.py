"""The Parcel workflow in three versions, and what the versioning tests share: an engine with
a controllable clock, and running the pending work.

v1 ships parcels of up to 30 kg and can put them on hold. v2 drops holding (``held``, ``Hold``,
``Release``), ships only up to 20 kg but lets couriers ship too, bounds the weight in ``Pack``'s
schema, records one more step when packing, adds returns (``returned``) and expires a parcel
left packed for two hours. v3 is v2 in which a shipped parcel is done (``shipped`` terminal,
no returns or deliveries). Every step uses built-in actions, so the command line can run them
without an app module.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

import ledgerflow
from ledgerflow.engine import Engine
from ledgerflow.worker import Worker

TENANT = "acme"
OTHER_TENANT = "globex"

PARCEL_V1 = """
name: Parcel
version: 1
description: Pack, ship and deliver a parcel.
initial_state: received
states: [received, packed, shipped, held, delivered, lost]
terminal_states: [delivered, lost]
events:
  Pack:
    payload:
      type: object
      required: [weight]
      properties: {weight: {type: number, minimum: 0}}
  Inspect:
    payload:
      type: object
      properties: {notifier: {type: string}}
transitions:
  - name: pack
    from: received
    to: packed
    on: Pack
    set: {weight: {expr: payload.weight}}
    steps:
      - {id: note, action: ledgerflow.record, params: {what: packed}}
  - name: inspect
    from: packed
    to: packed
    on: Inspect
    steps:
      - id: tell
        action: ledgerflow.notify
        params: {channel: inspectors, message: inspected, notifier: {expr: payload.notifier}}
  - name: ship
    from: packed
    to: shipped
    on: Ship
    roles: [clerk]
    condition: context.weight <= 30
  - {name: hold, from: [packed, shipped], to: held, on: Hold}
  - {name: release, from: held, to: packed, on: Release}
  - {name: deliver, from: shipped, to: delivered, on: Deliver}
  - {name: lose, from: "*", to: lost, on: Lose}
"""

PARCEL_V2 = """
name: Parcel
version: 2
description: Pack, ship and deliver a parcel.
initial_state: received
states: [received, packed, shipped, returned, delivered, lost]
terminal_states: [delivered, lost]
events:
  Pack:
    payload:
      type: object
      required: [weight]
      properties: {weight: {type: number, minimum: 0, maximum: 50}}
  Inspect:
    payload:
      type: object
      properties: {notifier: {type: string}}
transitions:
  - name: pack
    from: received
    to: packed
    on: Pack
    set: {weight: {expr: payload.weight}}
    steps:
      - {id: note, action: ledgerflow.record, params: {what: packed, by: v2}}
      - {id: label, action: ledgerflow.set_context, params: {labelled: true}, depends_on: [note]}
  - name: inspect
    from: packed
    to: packed
    on: Inspect
    steps:
      - id: tell
        action: ledgerflow.notify
        params: {channel: inspectors, message: inspected, notifier: {expr: payload.notifier}}
  - name: ship
    from: packed
    to: shipped
    on: Ship
    roles: [clerk, courier]
    condition: context.weight <= 20
  - {name: expire, from: packed, to: lost, on: Expire, after: 2h}
  - {name: return, from: shipped, to: returned, on: Return}
  - {name: deliver, from: [shipped, returned], to: delivered, on: Deliver}
  - {name: lose, from: "*", to: lost, on: Lose}
"""


#: what ``diff_workflows`` says from v1 to v2
V1_TO_V2 = """\
Parcel v1 -> v2
states
  - held
  + returned
events
  ~ Pack
      payload.properties.weight.maximum: added 50
  - Hold
  - Release
  + Expire
  + Return
transitions
  ~ pack (Pack: received -> packed)
      steps:
        ~ note (ledgerflow.record)
            params.by: added "v2"
        + label (ledgerflow.set_context)
  ~ ship (Ship: packed -> shipped)
      condition: "context.weight <= 30" -> "context.weight <= 20"
      roles: ["clerk"] -> ["clerk", "courier"]
  - hold (Hold: packed, shipped -> held)
  - release (Release: held -> packed)
  ~ deliver (Deliver: shipped, returned -> delivered)
      from: ["shipped"] -> ["shipped", "returned"]
  + expire (Expire: packed -> lost)
  + return (Return: shipped -> returned)"""


def parcel(version: int) -> ledgerflow.Definition:
    """Parcel at ``version`` (1, 2 or 3), compiled."""
    if version == 1:
        return ledgerflow.loads(PARCEL_V1, "yaml")
    v2 = ledgerflow.loads(PARCEL_V2, "yaml")
    if version == 2:
        return v2
    assert version == 3
    w = v2.workflow
    kept = ("pack", "inspect", "ship", "expire", "lose")
    return ledgerflow.compile_workflow(
        attrs.evolve(
            w,
            version=3,
            states=("received", "packed", "shipped", "lost"),
            terminal_states=("shipped", "lost"),
            transitions=tuple(t for t in w.transitions if t.name in kept),
        )
    )


def write_versions(directory: Path) -> list[Path]:
    """Parcel v1 and v2 as YAML files in ``directory``."""
    paths = [directory / "parcel_v1.yaml", directory / "parcel_v2.yaml"]
    paths[0].write_text(PARCEL_V1)
    paths[1].write_text(PARCEL_V2)
    return paths


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@attrs.define
class Parcels:
    """An engine with Parcel v1 and v2 registered, its clock, and ways to drive it."""

    engine: Engine
    clock: Clock

    def start(self, version: int | str = 1, tenant: str = TENANT) -> str:
        return self.engine.create_execution(
            "Parcel", version if isinstance(version, int) else "latest", tenant=tenant
        )

    def send(self, execution_id: str, event: str, tenant: str = TENANT, **kwargs: Any) -> str:
        return self.engine.enqueue_event(execution_id, event, tenant=tenant, **kwargs)

    def run(self) -> int:
        """Process every pending event (and fire due timers), as a worker would."""
        return Worker(self.engine, poll_interval=0.01).run_once()

    def packed(self, weight: float = 10, tenant: str = TENANT) -> str:
        """A v1 execution in ``packed``."""
        x = self.start(1, tenant)
        self.send(x, "Pack", tenant, payload={"weight": weight})
        self.run()
        return x

    def records(self, execution_id: str, tenant: str = TENANT) -> list[ledgerflow.Record]:
        return [e.record for e in self.engine.history(execution_id, tenant=tenant)]

    def check_replay(self, execution_id: str, tenant: str = TENANT) -> None:
        """The projection is the state replayed from the ledger, from zero and from every
        snapshot."""
        engine = self.engine
        found = engine.get_execution(execution_id, tenant=tenant)
        replayed = engine.replay(execution_id, tenant=tenant)
        shown = (found.version, found.state, found.status, dict(found.context), found.seq)
        folded = (replayed.version, replayed.name, replayed.status, dict(replayed.context))
        assert shown == (*folded, replayed.seq)
        records = self.records(execution_id, tenant)
        definition = engine.definition("Parcel", found.version)
        for snapshot in engine.store.snapshot_states(execution_id, tenant):
            later = [r for r in records if r.seq > snapshot.seq]
            again = ledgerflow.fold(
                definition,
                later,
                snapshot,
                versions=lambda v: engine.definition("Parcel", v),
            )
            assert again == replayed


def stored(parcels: Parcels) -> dict[str, Any]:
    """Everything a migration could write: row counts, and every execution's row and ledger."""
    engine = parcels.engine
    seen: dict[str, Any] = {"rows": engine.store.row_counts()}
    with engine.store.read(tenant=ledgerflow.store.ALL_TENANTS) as conn:
        rows = conn.exec_driver_sql(
            "SELECT id, tenant, version, state, status, projection_seq, updated_at "
            "FROM lf_executions ORDER BY id"
        ).all()
        seen["executions"] = [tuple(r) for r in rows]
        seen["events"] = [
            tuple(r)
            for r in conn.exec_driver_sql(
                "SELECT execution_id, seq, kind, status FROM lf_events ORDER BY execution_id, seq"
            ).all()
        ]
        seen["timers"] = [
            tuple(r)
            for r in conn.exec_driver_sql("SELECT id, state FROM lf_timers ORDER BY id").all()
        ]
    return seen


@pytest.fixture
def parcels(db_url: str) -> Iterator[Parcels]:
    """Parcels on ``db_url`` (SQLite and PostgreSQL), v1 and v2 registered, a snapshot every
    four records."""
    clock = Clock()
    engine = Engine(db_url, clock=clock, snapshot_every=4)
    engine.register(parcel(1))
    engine.register(parcel(2))
    yield Parcels(engine=engine, clock=clock)
    engine.close()
