"""Finding work stays an index probe per candidate as the leases table grows (it keeps a row
per execution ever worked on): the claim of a wake-up and the sweep for undecided events must
never scan every lease, whatever the planner knows of the tables."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from ledgerflow.engine import Engine
from ledgerflow.store import ALL_TENANTS
from ledgerflow.store.schema import leases
from ledgerflow.store.sql import _CLAIM, _CLAIM_FAIRLY, _PENDING_EXECUTIONS

TENANT = "acme"
PAYLOAD = {"invoice": {"id": "INV-1", "total": 120, "customer_id": "C-1"}}


def _scans(plan: Any) -> list[tuple[str, str]]:
    """Every (node type, relation) of an EXPLAIN (FORMAT JSON) plan."""
    found = []
    stack = [plan]
    while stack:
        node = stack.pop()
        found.append((node.get("Node Type", ""), node.get("Relation Name", "")))
        stack.extend(node.get("Plans", []))
    return found


def _generic_plan(engine: Engine, statement: Any, params: dict[str, Any]) -> list[tuple[str, str]]:
    """The plan PostgreSQL keeps for the statement once prepared (psycopg prepares a
    statement run five times): a generic one, made without the parameters' values."""
    compiled = statement.compile(dialect=engine.store.engine.dialect)
    names: list[str] = []

    def numbered(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    sql = re.sub(r"%\((\w+)\)s", numbered, compiled.string).replace("%%", "%")
    values = compiled.construct_params(params)
    with engine.store.write(tenant=ALL_TENANTS) as conn:
        conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
        conn.exec_driver_sql(f"PREPARE lf_probe AS {sql}")
        arguments = ", ".join(repr(values[name]) for name in names)
        raw = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) EXECUTE lf_probe({arguments})").scalar()
        conn.exec_driver_sql("DEALLOCATE lf_probe")
    body = raw if isinstance(raw, list) else json.loads(str(raw))
    return _scans(body[0]["Plan"])


def _plan(engine: Engine, statement: Any, params: dict[str, Any]) -> list[tuple[str, str]]:
    sql = statement.params(params).compile(
        dialect=engine.store.engine.dialect, compile_kwargs={"literal_binds": True}
    )
    with engine.store.write(tenant=ALL_TENANTS) as conn:
        raw = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {sql}".replace("%%", "%")).scalar()
    body = raw if isinstance(raw, list) else json.loads(str(raw))
    return _scans(body[0]["Plan"])


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("analysed", [False, True], ids=["no-statistics", "analysed"])
def test_finding_work_never_scans_every_lease(engine: Engine, analysed: bool) -> None:
    started = [
        engine.start(
            "InvoiceApproval", "CreateInvoice", tenant=TENANT, role="clerk", payload=PAYLOAD
        )
        for _ in range(20)
    ]
    now = engine.store.clock()
    with engine.store.write(tenant=ALL_TENANTS) as conn:
        conn.execute(
            leases.insert(),
            [
                {"execution_id": f"gone-{n}", "owner": "w", "token": 1, "expires_at": 0.0}
                for n in range(3000)
            ],
        )
        # the two oldest executions are held
        for x, _ in started[:2]:
            conn.execute(
                leases.insert().values(
                    execution_id=x, owner="w", token=1, expires_at=now + 60, tenant=TENANT
                )
            )
    if analysed:
        with engine.store.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                "ANALYZE lf_leases, lf_outbox, lf_events"
            )
    statements = [
        (_CLAIM["postgresql"], {"now": now}),
        (_CLAIM_FAIRLY["postgresql"], {"now": now, "tenant_limit": 5}),
        (_PENDING_EXECUTIONS, {"now": now, "limit": 100}),
    ]
    for statement, params in statements:
        for plan in (_plan, _generic_plan):
            scans = plan(engine, statement, params)
            assert ("Seq Scan", "lf_leases") not in scans, (plan.__name__, scans)
    # and the claim still passes the held executions over, oldest first
    claimed = engine.store.claim("me", 30)
    assert claimed is not None
    assert claimed[0] == started[2][0]
    fairly = engine.store.claim("me", 30, tenant_limit=5)
    assert fairly is not None
    assert fairly[0] == started[3][0]
