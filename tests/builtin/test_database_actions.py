"""ledgerflow.db.insert / update / delete, through the engine, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from ledgerflow import definitions
from ledgerflow.engine import Engine
from ledgerflow.store import ALL_TENANTS
from ledgerflow.worker import Worker

invoices = sa.Table(
    "app_invoices",
    sa.MetaData(),
    sa.Column("id", sa.String(50), primary_key=True),
    sa.Column("tenant", sa.String(200), primary_key=True),
    sa.Column("status", sa.String(50), nullable=False),
    sa.Column("total", sa.Float),
)

WORKFLOW: dict[str, Any] = {
    "name": "Books",
    "version": 1,
    "initial_state": "new",
    "states": ["new", "booked", "gone"],
    "terminal_states": ["gone"],
    "events": {"Book": {}, "Pay": {}, "Drop": {}, "Bad": {}},
    "transitions": [
        {
            "from": "new",
            "to": "booked",
            "on": "Book",
            "steps": [
                {
                    "id": "insert",
                    "action": "ledgerflow.db.insert",
                    "params": {
                        "table": "app_invoices",
                        "values": {
                            "id": {"expr": "payload.id"},
                            "status": "open",
                            "total": {"expr": "payload.total"},
                        },
                    },
                }
            ],
        },
        {
            "from": "booked",
            "to": "booked",
            "on": "Pay",
            "steps": [
                {
                    "id": "update",
                    "action": "ledgerflow.db.update",
                    "params": {
                        "table": "app_invoices",
                        "values": {"status": "paid"},
                        "where": {"id": {"expr": "payload.id"}},
                    },
                }
            ],
        },
        {
            "from": "booked",
            "to": "gone",
            "on": "Drop",
            "steps": [
                {
                    "id": "delete",
                    "action": "ledgerflow.db.delete",
                    "params": {"table": "app_invoices", "where": {"id": {"expr": "payload.id"}}},
                }
            ],
        },
        {
            "from": "booked",
            "to": "gone",
            "on": "Bad",
            "steps": [
                {
                    "id": "bad",
                    "action": "ledgerflow.db.update",
                    "params": {"expr": "payload.params"},
                }
            ],
        },
    ],
}


@pytest.fixture
def books(db_url: str) -> Iterator[Engine]:
    engine = Engine(db_url)
    invoices.drop(engine.store.engine, checkfirst=True)
    invoices.create(engine.store.engine)
    engine.register(definitions.compile_workflow(definitions.parse(WORKFLOW)))
    yield engine
    invoices.drop(engine.store.engine, checkfirst=True)
    engine.close()


def rows(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.store.read(tenant=ALL_TENANTS) as conn:
        return [tuple(r) for r in conn.execute(sa.select(invoices).order_by(invoices.c.tenant))]


def send(engine: Engine, tenant: str, execution_id: str, event: str, **payload: Any) -> str:
    event_id = engine.enqueue_event(execution_id, event, tenant=tenant, payload=payload)
    Worker(engine, poll_interval=0.01).run_once()
    return engine.event_status(event_id, tenant=tenant).status


def test_insert_update_delete_are_scoped_to_the_tenant(books: Engine) -> None:
    acme = books.create_execution("Books", tenant="acme")
    globex = books.create_execution("Books", tenant="globex")
    assert send(books, "acme", acme, "Book", id="INV-1", total=10.5) == "processed"
    assert send(books, "globex", globex, "Book", id="INV-1", total=99.0) == "processed"
    assert rows(books) == [("INV-1", "acme", "open", 10.5), ("INV-1", "globex", "open", 99.0)]
    assert send(books, "acme", acme, "Pay", id="INV-1") == "processed"
    assert rows(books) == [("INV-1", "acme", "paid", 10.5), ("INV-1", "globex", "open", 99.0)]
    assert send(books, "acme", acme, "Drop", id="INV-1") == "processed"
    assert rows(books) == [("INV-1", "globex", "open", 99.0)]
    results = [h.record for h in books.history(acme, tenant="acme") if h.kind == "step_succeeded"]
    assert [r.result for r in results] == [  # type: ignore[union-attr]
        {"table": "app_invoices", "inserted": 1},
        {"table": "app_invoices", "updated": 1},
        {"table": "app_invoices", "deleted": 1},
    ]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"table": "lf_events", "values": {"status": "x"}, "where": {"seq": 1}},
            "belongs to ledgerflow",
        ),
        ({"table": "nope", "values": {"status": "x"}, "where": {"id": "1"}}, "no table 'nope'"),
        (
            {"table": "app_invoices", "values": {"colour": "x"}, "where": {"id": "1"}},
            "has no column colour",
        ),
        (
            {"table": "app_invoices", "values": {"status": "x"}, "where": {}},
            "whole-table changes are refused",
        ),
        (
            {"table": "app_invoices", "values": {"status": "x"}, "where": {"tenant": "globex"}},
            "not this execution's tenant",
        ),
        (
            {"table": "app_invoices", "values": {"tenant": "globex"}, "where": {"id": "1"}},
            "tenant of a row cannot be changed",
        ),
    ],
)
def test_bad_database_action_parameters_fail_the_step_and_touch_nothing(
    books: Engine, params: dict[str, Any], message: str
) -> None:
    execution_id = books.create_execution("Books", tenant="acme")
    send(books, "acme", execution_id, "Book", id="INV-2", total=1.0)
    before = rows(books)
    assert send(books, "acme", execution_id, "Bad", params=params) == "failed"
    failed = [h for h in books.history(execution_id, tenant="acme") if h.kind == "step_failed"]
    assert message in failed[0].record.error  # type: ignore[union-attr]
    assert rows(books) == before
