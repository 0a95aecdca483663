"""The testing kit's harness on a migrated execution: its ledger reads, and its checks replay it
under each version in turn."""

from __future__ import annotations

from ledgerflow.testing import Harness
from versioning.parcel_workflows import parcel


def test_the_harness_checks_and_renders_a_migrated_execution() -> None:
    with Harness(parcel(1), parcel(2)) as harness:
        x = harness.start(version=1)
        harness.send(x, "Pack", {"weight": 10})
        harness.send(x, "Inspect", {"notifier": "log"})  # a snapshot comes before the migration
        report = harness.engine.migrate(
            "Parcel", 1, 2, executions=[x], tenant=harness.tenant, requested_by="ops"
        )
        assert report.outcomes[0].migrated
        harness.send(x, "Ship", role="courier")
        harness.send(x, "Return")
        assert harness.execution(x).state == "returned"
        assert len(harness.store.snapshot_states(x, harness.tenant)) >= 3
        harness.check(x)
        assert "migrated   v1 -> v2 in packed by ops" in harness.render(x)
