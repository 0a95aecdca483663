"""An action's result is recorded only while the caller holds the execution's lease, checked
by the statement that records it (SQLStore.insert_action_result with a lease), on SQLite and on
PostgreSQL; tests/tenants checks it as a confined role too."""

from __future__ import annotations

from ledgerflow.engine import Engine
from support.fenced_results import check_fenced_results


def test_a_result_is_recorded_only_under_the_lease(engine: Engine) -> None:
    check_fenced_results(engine, lambda tenant: engine.store.write(tenant=tenant))
