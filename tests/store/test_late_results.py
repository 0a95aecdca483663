"""Results recorded with an event's commit (actions registered with ``checkpoint=False``):
any number of them in one call, read back exactly as results recorded one by one, the first
result under a key kept, and the tenant wall holding."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from ledgerflow.store.sql import SQLStore
from support.executions import ensure_execution

RESULTS: list[Any] = [
    None,
    {"amount": 12.5, "nested": {"ok": True, "tags": ["a", None]}},
    "ünï — 東京 ' \\ %s $1",
    [1, 2, 3],
    0,
]


@pytest.fixture
def store(db_url: str) -> Iterator[SQLStore]:
    store = SQLStore(db_url)
    yield store
    store.close()


def _row(n: int, result: Any, tenant: str = "acme", x: str = "x1") -> dict[str, Any]:
    return {
        "key": f"{x}:e1:s{n}",
        "tenant": tenant,
        "execution_id": x,
        "event_id": "e1",
        "step_id": f"s{n}",
        "action": "quick",
        "result": result,
        "attempts": n + 1,
    }


def test_they_read_back_as_results_recorded_one_by_one(store: SQLStore) -> None:
    ensure_execution(store, "x1", "acme")
    rows = [_row(n, result) for n, result in enumerate(RESULTS)]
    with store.write(tenant="acme") as conn:
        store.insert_action_results(conn, rows)
        store.insert_action_results(conn, [])
    with store.read(tenant="acme") as conn:
        assert store.action_results_for(conn, "x1", ["e1"], tenant="acme") == {
            row["key"]: row["result"] for row in rows
        }
        for row in rows:
            assert store.action_result(conn, row["key"]) == (True, row["result"])
        attempts: dict[str, int] = dict(
            conn.execute(sa.text("SELECT step_id, attempts FROM lf_action_results")).all()
        )
    assert attempts == {f"s{n}": n + 1 for n in range(len(RESULTS))}


def test_a_key_recorded_already_keeps_its_first_result(store: SQLStore) -> None:
    ensure_execution(store, "x1", "acme")
    with store.write(tenant="acme") as conn:
        store.insert_action_result(conn, **_row(0, {"first": True}))
    with store.write(tenant="acme") as conn:
        store.insert_action_results(conn, [_row(0, {"second": True}), _row(1, "new")])
    with store.read(tenant="acme") as conn:
        assert store.action_results_for(conn, "x1", ["e1"], tenant="acme") == {
            "x1:e1:s0": {"first": True},
            "x1:e1:s1": "new",
        }


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_another_tenants_rows_are_refused_by_the_wall(store: SQLStore) -> None:
    ensure_execution(store, "x1", "acme")
    with (
        pytest.raises(sa.exc.DBAPIError, match="row-level security"),
        store.write(tenant="other") as conn,
    ):
        store.insert_action_results(conn, [_row(0, 1, tenant="acme")])
    with store.read(tenant="acme") as conn:
        assert store.action_results_for(conn, "x1", ["e1"], tenant="acme") == {}
