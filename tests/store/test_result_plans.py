"""Reading an event's recorded results stays an index probe as results pile up: the worker reads
them in the transaction that takes an execution, for every event it decides, and
lf_action_results keeps a row per step ever run, of every tenant."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ledgerflow.engine import Engine
from ledgerflow.store import ALL_TENANTS
from ledgerflow.store.sql import _RESULTS_OF_EVENTS


def _nodes(plan: Any) -> list[dict[str, Any]]:
    found, stack = [], [plan]
    while stack:
        node = stack.pop()
        found.append(node)
        stack.extend(node.get("Plans", []))
    return found


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_an_events_results_are_read_through_the_index_by_tenant_and_execution(
    engine: Engine,
) -> None:
    x = engine.create_execution("InvoiceApproval", tenant="acme")
    with engine.store.write(tenant=ALL_TENANTS) as conn:
        # 20,000 executions of five tenants, three results each
        conn.exec_driver_sql(
            "INSERT INTO lf_executions (id, tenant, workflow, version, state, context, status, "
            "projection_seq, decided_seq, created_at, updated_at) "
            "SELECT 'x' || g, 't' || mod(g, 5), 'W', 1, 's', '{}', 'active', 0, 0, 0, 0 "
            "FROM generate_series(1, 20000) g"
        )
        conn.exec_driver_sql(
            "INSERT INTO lf_action_results (key, tenant, execution_id, event_id, step_id, "
            "action, result, attempts, created_at) "
            "SELECT 'x' || g || ':e:s' || s, 't' || mod(g, 5), 'x' || g, 'e' || g, 's' || s, "
            "'a', '1', 1, 0 FROM generate_series(1, 20000) g, generate_series(1, 3) s"
        )
        conn.exec_driver_sql("ANALYZE lf_action_results")
    compiled = _RESULTS_OF_EVENTS.compile(dialect=engine.store.engine.dialect)
    params = compiled.construct_params(
        {"tenant": "acme", "execution_id": x, "event_ids": ["e1", "e2"]}
    )
    with engine.store.read(tenant="acme") as conn:
        raw = conn.exec_driver_sql(
            f"EXPLAIN (ANALYZE, FORMAT JSON) {compiled.string}", params
        ).scalar()
    body = raw if isinstance(raw, list) else json.loads(str(raw))
    (scan,) = [n for n in _nodes(body[0]["Plan"]) if n.get("Relation Name") == "lf_action_results"]
    assert scan["Node Type"] in ("Index Scan", "Bitmap Heap Scan", "Index Only Scan"), scan
    probes = [n.get("Index Cond", "") for n in _nodes(scan)] + [scan.get("Index Cond", "")]
    assert any("tenant" in c and "execution_id" in c for c in probes), probes
    # a probe: the rows looked at are the execution's, not every result of the tenant
    assert scan.get("Rows Removed by Filter", 0) + scan.get("Rows Removed by Index Recheck", 0) < 10
