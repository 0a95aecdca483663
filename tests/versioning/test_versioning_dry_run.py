"""``Engine.migrate(..., dry_run=True)``: every chosen ledger replayed under the new version,
divergences reported with their reason, and nothing written."""

from __future__ import annotations

import json

from ledgerflow.versioning import DivergenceKind, MigrationRefusal
from versioning.parcel_workflows import TENANT, Parcels, parcels, stored

__all__ = ["parcels"]  # the fixture: imported for pytest to find


def fleet(parcels: Parcels) -> dict[str, str]:
    """Executions on v1, one of each kind the dry run tells apart, oldest first."""
    made: dict[str, str] = {}

    def make(name: str, *events: tuple[str, dict[str, object], str | None]) -> None:
        parcels.clock.now += 1
        x = parcels.start(1)
        for event, payload, role in events:
            parcels.send(x, event, payload=payload, role=role)
        parcels.run()
        made[name] = x

    make("alike", ("Pack", {"weight": 10}, None))
    make("heavy", ("Pack", {"weight": 25}, None), ("Ship", {}, "clerk"))
    make("courier", ("Pack", {"weight": 10}, None), ("Ship", {}, "courier"))
    make("held", ("Pack", {"weight": 10}, None), ("Hold", {}, None))
    make("failed", ("Pack", {"weight": 10}, None), ("Inspect", {"notifier": "pigeon"}, None))
    return made


def test_a_dry_run_reports_divergences_and_refusals_and_writes_nothing(parcels: Parcels) -> None:
    made = fleet(parcels)
    before = stored(parcels)
    report = parcels.engine.migrate("Parcel", 1, 2, executions="all", tenant=TENANT, dry_run=True)
    assert stored(parcels) == before
    assert report.dry_run
    found = {o.execution_id: o for o in report.outcomes}
    assert [o.execution_id for o in report.outcomes] == list(made.values())
    assert found[made["alike"]].migrated
    assert found[made["alike"]].divergence is None
    heavy = found[made["heavy"]]
    assert heavy.migrated  # shipped exists in v2, though v2 would not have shipped it
    assert heavy.divergence is not None
    # both events were appended before a worker took them: Ship is seq 3, decided at seq 6
    assert (heavy.divergence.seq, heavy.divergence.event, heavy.divergence.kind) == (
        3,
        "Ship",
        DivergenceKind.REJECTED,
    )
    courier = found[made["courier"]].divergence
    assert courier is not None
    assert (courier.kind, courier.event) == (DivergenceKind.APPLIED, "Ship")
    held = found[made["held"]]
    assert (held.migrated, held.refusal) == (False, MigrationRefusal.STATE_MISSING)
    assert held.divergence is not None
    assert held.divergence.kind is DivergenceKind.REJECTED
    assert "has no event 'Hold'" in held.divergence.detail
    failed = found[made["failed"]]
    assert (failed.migrated, failed.refusal) == (False, MigrationRefusal.FAILED)
    assert failed.divergence is None  # v2 decides its events alike; it fails on a step
    assert (len(report.migrated), len(report.refused), len(report.diverging)) == (3, 2, 3)


def test_a_dry_run_foretells_the_migration(parcels: Parcels) -> None:
    fleet(parcels)
    foretold = parcels.engine.migrate("Parcel", 1, 2, executions="all", dry_run=True)
    done = parcels.engine.migrate("Parcel", 1, 2, executions="all", requested_by="ops")
    assert [(o.execution_id, o.migrated, o.refusal) for o in foretold.outcomes] == [
        (o.execution_id, o.migrated, o.refusal) for o in done.outcomes
    ]
    assert all(o.divergence is None for o in done.outcomes)  # only dry runs replay
    assert all(o.seq is None for o in foretold.outcomes)
    assert all(o.seq is not None for o in done.migrated)


def test_the_report_reads_as_lines_and_as_one_json_document(parcels: Parcels) -> None:
    made = fleet(parcels)
    report = parcels.engine.migrate("Parcel", 1, 2, executions="all", dry_run=True)
    lines = report.lines()
    assert lines[0] == (
        "dry run of Parcel v1 -> v2, nothing written: 5 execution(s), 3 would be migrated, "
        "2 refused, 3 diverge when replayed under v2"
    )
    assert f"would migrate {made['alike']} (tenant acme) in packed" in lines
    assert (
        f"refused {made['held']} (tenant acme): state_missing: state 'held' does not exist in "
        "Parcel v2" in lines
    )
    assert (
        "    diverges at seq 3 (Ship): rejected: v1 applied it: packed -> shipped; v2 would "
        in ("\n".join(lines))
    )
    data = report.to_json()
    assert json.loads(json.dumps(data)) == data
    assert (data["dry_run"], data["migrated"], data["refused"], data["diverging"]) == (
        True,
        3,
        2,
        3,
    )
    heavy = next(e for e in data["executions"] if e["execution_id"] == made["heavy"])
    assert heavy["divergence"]["kind"] == "rejected"
