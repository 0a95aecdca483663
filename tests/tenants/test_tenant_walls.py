"""Tenants are walls: every public call answers "not found" for another tenant's execution or
event, and on PostgreSQL row-level security keeps even a careless query of a
database action inside its execution's tenant."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

import invoice_app
from ledgerflow import definitions
from ledgerflow.engine import Engine
from ledgerflow.errors import EventNotFoundError, ExecutionNotFoundError, InvalidInputError
from ledgerflow.model import ExecutionFailed, StepSucceeded
from ledgerflow.registry import ActionContext, Isolation
from ledgerflow.store import ALL_TENANTS, tenant_scope, tenant_wall
from ledgerflow.testing import Clock
from ledgerflow.transports import Wakeup
from ledgerflow.worker import Worker

ACME, GLOBEX = "acme", "globex"

INVOICE = {
    "invoice": {
        "id": "INV-1",
        "customer_id": "C-1",
        "total": 120.0,
        "currency": "EUR",
        "lines": [{"sku": "A", "qty": 1, "price": 120.0}],
    }
}


def _invoice(total: float, invoice_id: str) -> dict[str, Any]:
    return {"invoice": {**INVOICE["invoice"], "id": invoice_id, "total": total}}


# Every public Engine method that takes a tenant, called for another tenant's execution (or
# event). A new method with a tenant parameter fails test_every_tenant_call_is_listed until it
# is added here.
CROSS_TENANT_CALLS: dict[str, Callable[[Engine, str, str], Any]] = {
    "enqueue_event": lambda e, x, ev: e.enqueue_event(
        x, "CreateInvoice", tenant=GLOBEX, role="clerk", payload=INVOICE
    ),
    "get_execution": lambda e, x, ev: e.get_execution(x, tenant=GLOBEX),
    "history": lambda e, x, ev: e.history(x, tenant=GLOBEX),
    "replay": lambda e, x, ev: e.replay(x, tenant=GLOBEX),
    "event_status": lambda e, x, ev: e.event_status(ev, tenant=GLOBEX),
    "timers": lambda e, x, ev: e.timers(x, tenant=GLOBEX),
    "retry": lambda e, x, ev: e.retry(x, tenant=GLOBEX),
    "migrate": lambda e, x, ev: _migrated_or_not_found(e, x),
    # a worker handed a wake-up naming another tenant: not found, and no lease left behind
    "take_and_process": lambda e, x, ev: e.take_and_process(
        x, tenant=GLOBEX, owner="w-globex", ttl=30
    ),
}


def _migrated_or_not_found(engine: Engine, execution_id: str) -> None:
    """A migration answers for each execution in its report instead of raising: the other
    tenant's execution must be refused as not found there."""
    report = engine.migrate("InvoiceApproval", 1, 2, executions=[execution_id], tenant=GLOBEX)
    (outcome,) = report.outcomes
    assert not outcome.migrated
    assert outcome.refusal is not None
    raise ExecutionNotFoundError(f"{outcome.refusal}: {outcome.detail}")


# calls whose tenant is the one to create something under, not a lookup
CREATES = {"create_execution", "start"}
# calls that take a tenant from a lease the worker holds (internal to workers)
WORKER_SIDE = {"process"}


def _tenant_methods() -> set[str]:
    return {
        name
        for name, member in inspect.getmembers(Engine, inspect.isfunction)
        if not name.startswith("_") and "tenant" in inspect.signature(member).parameters
    }


def test_every_tenant_call_is_listed() -> None:
    listed = set(CROSS_TENANT_CALLS) | CREATES | WORKER_SIDE
    missing = _tenant_methods() - listed
    assert not missing, f"add a cross-tenant case for {sorted(missing)}"


@pytest.fixture
def acme_execution(engine: Engine) -> tuple[str, str]:
    # a second version, for migrate
    text = invoice_app.DEFINITION.read_text().replace("\nversion: 1\n", "\nversion: 2\n", 1)
    engine.register(definitions.loads(text, "yaml"))
    execution_id = engine.create_execution("InvoiceApproval", tenant=ACME)
    event_id = engine.enqueue_event(
        execution_id, "CreateInvoice", tenant=ACME, role="clerk", payload=INVOICE
    )
    return execution_id, event_id


@pytest.mark.parametrize("call", sorted(CROSS_TENANT_CALLS))
def test_another_tenants_execution_is_not_found(
    engine: Engine, acme_execution: tuple[str, str], call: str
) -> None:
    if call not in _tenant_methods():
        pytest.fail(f"Engine.{call} is listed but does not exist or takes no tenant")
    execution_id, event_id = acme_execution
    before = engine.store.row_counts()
    with pytest.raises((ExecutionNotFoundError, EventNotFoundError), match="not found"):
        CROSS_TENANT_CALLS[call](engine, execution_id, event_id)
    assert engine.store.row_counts() == before


@pytest.mark.parametrize("tenant", [ALL_TENANTS, "", "  "])
def test_the_wildcard_and_blank_tenants_are_refused(engine: Engine, tenant: str) -> None:
    before = engine.store.row_counts()
    with pytest.raises(InvalidInputError, match="tenant"):
        engine.create_execution("InvoiceApproval", tenant=tenant)
    assert engine.store.row_counts() == before


# ----------------------------------------------------------------------------------------------
# Row-level security (PostgreSQL)
# ----------------------------------------------------------------------------------------------

SNOOP: dict[str, Any] = {
    "name": "Snoop",
    "version": 1,
    "initial_state": "idle",
    "states": ["idle", "done"],
    "terminal_states": ["done"],
    "transitions": [
        {
            "name": "snoop",
            "from": "idle",
            "to": "done",
            "on": "Snoop",
            "steps": [{"id": "snoop", "action": "test.snoop"}],
        }
    ],
}


def _snoop(params: dict[str, Any], context: ActionContext) -> dict[str, Any]:
    """A database action that forgets every tenant filter, then tries to change and to
    create other tenants' rows."""
    conn = context.connection
    assert conn is not None
    seen = sorted(r.tenant for r in conn.execute(sa.select(invoice_app.invoices.c.tenant)))
    executions = sorted(
        r[0] for r in conn.exec_driver_sql("SELECT DISTINCT tenant FROM lf_executions")
    )
    events = conn.exec_driver_sql("SELECT count(*) FROM lf_events").scalar_one()
    updated = conn.execute(invoice_app.invoices.update().values(status="tampered")).rowcount
    deleted = conn.exec_driver_sql("DELETE FROM lf_outbox").rowcount
    return {
        "invoices_seen": seen,
        "executions_seen": executions,
        "events_seen": events,
        "invoices_updated": updated,
        "outbox_deleted": deleted,
    }


def _forge(params: dict[str, Any], context: ActionContext) -> dict[str, Any]:
    """A database action that tries to write a row for another tenant."""
    conn = context.connection
    assert conn is not None
    conn.execute(
        invoice_app.invoices.insert().values(
            tenant=ACME,
            id="FORGED",
            customer_id="X",
            total=1.0,
            currency="EUR",
            status="approved",
        )
    )
    return {}


@pytest.fixture
def pg_engine(pg_url: str, db_url: str) -> Iterator[Engine]:
    # db_url's postgresql parameter empties the session's database first
    engine = Engine(pg_url)
    invoice_app.setup(engine)
    with engine.store.write(tenant=ALL_TENANTS) as conn:
        for table in reversed(invoice_app.metadata.sorted_tables):
            conn.execute(table.delete())
    forge = {
        **SNOOP,
        "name": "Forge",
        "transitions": [
            {**SNOOP["transitions"][0], "steps": [{"id": "forge", "action": "test.forge"}]}
        ],
    }
    engine.registry.action("test.snoop", isolation=Isolation.READ_COMMITTED)(_snoop)
    engine.registry.action("test.forge", isolation=Isolation.READ_COMMITTED)(_forge)
    for body in (SNOOP, forge):
        engine.register(definitions.compile_workflow(definitions.parse(body)))
    yield engine
    engine.close()


def _run(engine: Engine) -> None:
    Worker(engine, poll_interval=0.05).run(until_idle=True)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_database_action_sees_and_changes_only_its_own_tenants_rows(
    pg_engine: Engine,
) -> None:
    engine = pg_engine
    # two tenants, each with an approved invoice written by the workflow's own actions
    invoices = {}
    for tenant, invoice_id in ((ACME, "A-1"), (GLOBEX, "G-1")):
        x = invoices[tenant] = engine.create_execution("InvoiceApproval", tenant=tenant)
        engine.enqueue_event(
            x, "CreateInvoice", tenant=tenant, role="clerk", payload=_invoice(50.0, invoice_id)
        )
    _run(engine)
    snoop = engine.create_execution("Snoop", tenant=GLOBEX)
    engine.enqueue_event(snoop, "Snoop", tenant=GLOBEX)
    _run(engine)

    result = next(
        e.record.result
        for e in engine.history(snoop, tenant=GLOBEX)
        if isinstance(e.record, StepSucceeded)
    )
    assert isinstance(result, dict)
    assert result["invoices_seen"] == [GLOBEX]
    assert result["executions_seen"] == [GLOBEX]
    assert result["invoices_updated"] == 1
    # globex's ledgers as they stood: its invoice's, and the snoop's first two records
    assert result["events_seen"] == len(engine.history(invoices[GLOBEX], tenant=GLOBEX)) + 2
    assert result["outbox_deleted"] >= 1  # its own wake-ups only
    with engine.store.read(tenant=ALL_TENANTS) as conn:
        tenants = {r[0] for r in conn.exec_driver_sql("SELECT tenant FROM lf_events")}
        acme_ledgers = conn.exec_driver_sql(
            "SELECT count(*) FROM lf_events WHERE tenant = 'acme'"
        ).scalar_one()
    assert tenants == {ACME, GLOBEX}
    assert acme_ledgers > 0
    # acme's rows are untouched
    acme = invoice_app.rows(engine, ACME)
    assert [r["status"] for r in acme["invoices"]] != ["tampered"]
    assert len(acme["invoices"]) == 1
    assert invoice_app.rows(engine, GLOBEX)["invoices"][0]["status"] == "tampered"


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_database_action_cannot_write_a_row_for_another_tenant(pg_engine: Engine) -> None:
    engine = pg_engine
    forge = engine.create_execution("Forge", tenant=GLOBEX)
    engine.enqueue_event(forge, "Snoop", tenant=GLOBEX)
    _run(engine)
    found = engine.get_execution(forge, tenant=GLOBEX)
    assert found.status == "failed"
    failed = engine.history(forge, tenant=GLOBEX)[-1].record
    assert isinstance(failed, ExecutionFailed)
    assert "row-level security" in failed.reason
    assert invoice_app.rows(engine, ACME)["invoices"] == []


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_transaction_with_no_tenant_sees_no_tenants_rows(pg_engine: Engine) -> None:
    engine = pg_engine
    engine.create_execution("InvoiceApproval", tenant=ACME)
    with engine.store.read() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM lf_executions").scalar_one() == 0
    with tenant_scope(GLOBEX), engine.store.read() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM lf_executions").scalar_one() == 0
    with tenant_scope(ACME), engine.store.read() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM lf_executions").scalar_one() == 1
    with engine.store.read(tenant=ALL_TENANTS) as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM lf_executions").scalar_one() == 1


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_the_wall_holds_for_the_tables_owner_and_is_put_once(pg_engine: Engine) -> None:
    engine = pg_engine
    with engine.store.write() as conn:
        # the test role owns the tables; FORCE makes the policies apply to it too
        owner = conn.exec_driver_sql(
            "SELECT relforcerowsecurity FROM pg_class WHERE relname = 'invoices'"
        ).scalar_one()
        assert owner is True
        assert tenant_wall(conn, invoice_app.invoices) is False  # already there


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_the_wall_goes_on_a_table_in_another_schema(pg_engine: Engine) -> None:
    engine = pg_engine
    metadata = sa.MetaData()
    notes = sa.Table(
        "notes",
        metadata,
        sa.Column("tenant", sa.String(200), primary_key=True),
        sa.Column("id", sa.Integer, primary_key=True),
        schema="walled",
    )
    with engine.store.write() as conn:
        conn.exec_driver_sql("CREATE SCHEMA IF NOT EXISTS walled")
        metadata.create_all(conn)
        assert tenant_wall(conn, notes) is True
        assert tenant_wall(conn, "walled.notes") is False
    try:
        with engine.store.write(tenant=ALL_TENANTS) as conn:
            conn.execute(notes.insert(), [{"tenant": ACME, "id": 1}, {"tenant": GLOBEX, "id": 2}])
        with engine.store.read(tenant=GLOBEX) as conn:
            assert [r.id for r in conn.execute(sa.select(notes))] == [2]
    finally:
        with engine.store.write() as conn:
            conn.exec_driver_sql("DROP SCHEMA walled CASCADE")


def test_tenant_wall_is_a_no_op_on_sqlite(tmp_path: Any) -> None:
    engine = Engine(f"sqlite:///{tmp_path}/walls.db")
    try:
        with engine.store.write() as conn:
            assert tenant_wall(conn, "anything") is False
    finally:
        engine.close()


def test_the_test_role_is_not_exempt_from_row_level_security(pg_url: str) -> None:
    """Every PostgreSQL test runs as a role the wall applies to; a superuser would pass
    through it and the tests above would prove nothing."""
    with psycopg.connect(pg_url) as conn:
        row = conn.execute(
            "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
    assert row == (False, False)


# ----------------------------------------------------------------------------------------------
# Per-tenant limits
# ----------------------------------------------------------------------------------------------


def test_claims_go_round_robin_across_tenants_under_a_limit(engine: Engine) -> None:
    noisy = [engine.create_execution("InvoiceApproval", tenant=ACME) for _ in range(6)]
    for x in noisy:
        engine.enqueue_event(x, "CreateInvoice", tenant=ACME, role="clerk", payload=INVOICE)
    quiet = engine.create_execution("InvoiceApproval", tenant=GLOBEX)
    engine.enqueue_event(quiet, "CreateInvoice", tenant=GLOBEX, role="clerk", payload=INVOICE)

    store = engine.store
    first = store.claim("w1", 30.0, tenant_limit=5)
    second = store.claim("w2", 30.0, tenant_limit=5)
    assert first is not None
    assert second is not None
    # the oldest wake-up of each tenant first: the quiet tenant's comes second, not seventh
    assert (first[0], first[1]) == (noisy[0], ACME)
    assert (second[0], second[1]) == (quiet, GLOBEX)
    # without a limit the order is the wake-ups' own
    assert store.claim("w3", 30.0) == (noisy[1], ACME, 1)


def test_a_tenant_at_its_limit_is_passed_over(engine: Engine) -> None:
    noisy = [engine.create_execution("InvoiceApproval", tenant=ACME) for _ in range(3)]
    for x in noisy:
        engine.enqueue_event(x, "CreateInvoice", tenant=ACME, role="clerk", payload=INVOICE)
    store = engine.store
    assert store.claim("w1", 30.0, tenant_limit=2) is not None
    assert store.claim("w2", 30.0, tenant_limit=2) is not None
    assert store.tenant_at_limit(ACME, 2)
    assert not store.tenant_at_limit(GLOBEX, 1)
    assert store.claim("w3", 30.0, tenant_limit=2) is None  # acme holds two leases
    assert store.claim("w3", 30.0, tenant_limit=3) is not None


def test_an_execution_held_back_after_a_failure_does_not_count_towards_the_limit(
    engine: Engine,
) -> None:
    held = [engine.create_execution("InvoiceApproval", tenant=ACME) for _ in range(2)]
    for x in held:
        engine.enqueue_event(x, "CreateInvoice", tenant=ACME, role="clerk", payload=INVOICE)
    store = engine.store
    claimed = store.claim("w1", 30.0, tenant_limit=1)
    assert claimed is not None
    assert store.tenant_at_limit(ACME, 1)
    # the worker parks it for a pause after a failure: nobody works on it meanwhile
    assert store.renew_lease(claimed[0], "w1", claimed[2], 120.0, parked=True)
    assert not store.tenant_at_limit(ACME, 1)
    other = store.claim("w2", 30.0, tenant_limit=1)
    assert other is not None
    assert other[0] != claimed[0]


def test_worker_refuses_a_limit_below_one(engine: Engine, tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="tenant_limit"):
        Worker(engine, tenant_limit=0)


def test_a_limited_worker_finishes_every_tenants_work(tmp_path: Any) -> None:
    clock = Clock()
    engine = Engine(f"sqlite:///{tmp_path}/limits.db", clock=clock)
    try:
        engine.store.upgrade()
        invoice_app.setup(engine)
        made = []
        for i in range(4):
            tenant = ACME if i < 3 else GLOBEX
            x = engine.create_execution("InvoiceApproval", tenant=tenant)
            engine.enqueue_event(
                x, "CreateInvoice", tenant=tenant, role="clerk", payload=_invoice(10.0, f"I{i}")
            )
            made.append((x, tenant))
        Worker(engine, poll_interval=0.05, tenant_limit=1).run(until_idle=True)
        for x, tenant in made:
            assert engine.get_execution(x, tenant=tenant).state != "draft"
    finally:
        engine.close()


def test_a_wake_up_naming_the_wrong_tenant_does_not_hold_the_execution_back(
    engine: Engine,
) -> None:
    x = engine.create_execution("InvoiceApproval", tenant=ACME)
    engine.enqueue_event(x, "CreateInvoice", tenant=ACME, role="clerk", payload=INVOICE)
    worker = Worker(engine, poll_interval=0.05)
    # a forged (or corrupt) wake-up: the execution's id with another tenant
    assert worker.handle([Wakeup(execution_id=x, tenant=GLOBEX, event_id="")]) == []
    assert engine.get_execution(x, tenant=ACME).state == "draft"
    # the lease went at once: the real wake-up is acted on now, not after a failure's pause
    assert worker.handle([Wakeup(execution_id=x, tenant=ACME, event_id="")]) == []
    assert engine.get_execution(x, tenant=ACME).state == "pending_approval"


def test_a_wake_up_naming_no_execution_at_all_leaves_no_lease_behind(engine: Engine) -> None:
    x = engine.create_execution("InvoiceApproval", tenant=ACME)
    worker = Worker(engine, poll_interval=0.05)
    stray = [Wakeup(execution_id=f"no-such-{i}", tenant=ACME, event_id="") for i in range(3)]
    assert worker.handle(stray) == []
    # the wrong tenant's wake-up of a real execution gives its lease up but keeps the row (its
    # fencing token goes on counting); the ones of no execution leave no row at all
    assert worker.handle([Wakeup(execution_id=x, tenant=GLOBEX, event_id="")]) == []
    with engine.store.read(tenant=ALL_TENANTS) as conn:
        rows = conn.execute(sa.text("SELECT execution_id, expires_at FROM lf_leases")).all()
    assert [(r.execution_id, r.expires_at) for r in rows] == [(x, 0.0)]
