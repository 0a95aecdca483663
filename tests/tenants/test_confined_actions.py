"""Confined roles: database actions that run as a confined PostgreSQL role (``action_db``) stay
inside their tenant even when their SQL claims to act for every tenant, while the built-in
database actions and the InvoiceApproval example work as before."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

import invoice_app
from ledgerflow import definitions
from ledgerflow.engine import Engine, Lease
from ledgerflow.errors import ConfinementError, InvalidInputError, LeaseLostError
from ledgerflow.executor import _transient
from ledgerflow.model import StepSucceeded
from ledgerflow.registry import ActionContext, Isolation
from ledgerflow.store import (
    ALL_TENANTS,
    SQLStore,
    confine_role,
    confinement_prerequisites,
    tenant_wall,
)
from ledgerflow.worker import Worker
from support.cli import Cli
from support.fenced_results import check_fenced_results
from support.fenced_results import record as fenced_record

ACME, GLOBEX = "acme", "globex"
PG_ADMIN = os.environ.get("LEDGERFLOW_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")

pytestmark = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)

ESCAPE: dict[str, Any] = {
    "name": "Escape",
    "version": 1,
    "initial_state": "idle",
    "states": ["idle", "done"],
    "terminal_states": ["done"],
    "events": {
        "Escape": {"payload": {"type": "object", "properties": {"victim": {"type": "string"}}}}
    },
    "transitions": [
        {
            "name": "escape",
            "from": "idle",
            "to": "done",
            "on": "Escape",
            "steps": [
                {
                    "id": "escape",
                    "action": "test.escape",
                    "params": {"victim": {"expr": "payload.victim"}},
                }
            ],
        }
    ],
}

SIDE_EFFECTS: dict[str, Any] = {
    "name": "SideEffects",
    "version": 1,
    "initial_state": "idle",
    "states": ["idle", "asked", "pinged", "done"],
    "terminal_states": ["done"],
    "events": {"Go": {}, "Ping": {}, "Later": {}},
    "transitions": [
        {
            "name": "go",
            "from": "idle",
            "to": "asked",
            "on": "Go",
            "steps": [
                {
                    "id": "emit",
                    "action": "ledgerflow.emit_event",
                    "params": {"event": "Ping"},
                },
                {
                    "id": "later",
                    "action": "ledgerflow.schedule_event",
                    "params": {"event": "Later", "after": "1h"},
                },
            ],
        },
        {"name": "ping", "from": "asked", "to": "pinged", "on": "Ping"},
        {"name": "later", "from": "pinged", "to": "done", "on": "Later"},
    ],
}


def _attempt(conn: sa.Connection, sql: str) -> Any:
    """Run ``sql`` in a savepoint: its first column's values, or the error's first word."""
    try:
        with conn.begin_nested():
            result = conn.exec_driver_sql(sql)
            return sorted(r[0] for r in result) if result.returns_rows else result.rowcount
    except sa.exc.DBAPIError as exc:
        return type(exc.orig).__name__


def _escape(params: dict[str, Any], context: ActionContext) -> dict[str, Any]:
    """A hostile database action: claims every tenant, then tries every door out."""
    conn = context.connection
    assert conn is not None
    found = {
        "role": conn.exec_driver_sql("SELECT session_user").scalar_one(),
        "own": _attempt(conn, "SELECT DISTINCT tenant FROM lf_executions"),
        "claim": conn.exec_driver_sql(
            "SELECT set_config('ledgerflow.tenant', '*', true)"
        ).scalar_one(),
        "executions": _attempt(conn, "SELECT DISTINCT tenant FROM lf_executions"),
        "invoices": _attempt(conn, "SELECT DISTINCT tenant FROM invoices"),
        "leases": _attempt(conn, "SELECT execution_id FROM lf_leases"),
        "workers": _attempt(conn, "SELECT id FROM lf_workers"),
        "tampered": _attempt(conn, "UPDATE invoices SET status = 'tampered'"),
        "events_deleted": _attempt(conn, "DELETE FROM lf_events"),
        "confinement_lifted": _attempt(conn, "DELETE FROM lf_confined_roles"),
        "reset_role": _attempt(conn, "RESET ROLE"),
        "after_reset": _attempt(conn, "SELECT DISTINCT tenant FROM lf_executions"),
        "wall_key": _attempt(conn, "SELECT secret FROM lf_wall_secret"),
    }
    # name another tenant, keeping this transaction's own seal: still nothing
    other = ACME if context.tenant == GLOBEX else GLOBEX
    conn.execute(
        sa.text("SELECT set_config('ledgerflow.tenant', :tenant, true)"), {"tenant": other}
    )
    found["named"] = _attempt(conn, "SELECT DISTINCT tenant FROM lf_executions")
    found["named_invoices"] = _attempt(conn, "SELECT DISTINCT tenant FROM invoices")
    # and rows of its own tenant that name another tenant's execution: refused
    conn.execute(
        sa.text("SELECT set_config('ledgerflow.tenant', :tenant, true)"),
        {"tenant": context.tenant},
    )
    found["forged_event"] = _attempt(
        conn,
        "INSERT INTO lf_events (execution_id, seq, event_id, tenant, kind, name, body, "
        f"created_at) VALUES ('{params['victim']}', 99, 'forged', '{context.tenant}', "
        "'event_received', 'X', '{}', 0)",
    )
    found["forged_wakeup"] = _attempt(
        conn,
        "INSERT INTO lf_outbox (execution_id, tenant, event_id, created_at) "
        f"VALUES ('{params['victim']}', '{context.tenant}', 'forged', 0)",
    )
    # put the setting back: left at "*", it would keep the step's own result from being
    # recorded (the wall refuses a globex row to a transaction that acts for "*"), and the step
    # would fail instead of reporting
    conn.execute(
        sa.text("SELECT set_config('ledgerflow.tenant', :tenant, true)"), {"tenant": context.tenant}
    )
    return found


@pytest.fixture
def confined(pg_url: str, pg_action_url: str, db_url: str) -> Iterator[Engine]:
    """The InvoiceApproval example and the two workflows above, their database actions run as
    the session's confined role."""
    engine = Engine(pg_url, action_db=pg_action_url)
    invoice_app.setup(engine)
    with engine.store.write(tenant=ALL_TENANTS) as conn:
        for table in reversed(invoice_app.metadata.sorted_tables):
            conn.execute(table.delete())
        confine_role(conn, _role(pg_action_url), tables=invoice_app.metadata.sorted_tables)
    engine.registry.action(
        "test.escape", isolation=Isolation.READ_COMMITTED, additional_params=True
    )(_escape)
    for body in (ESCAPE, SIDE_EFFECTS):
        engine.register(definitions.compile_workflow(definitions.parse(body)))
    yield engine
    engine.close()


def _role(url: str) -> str:
    return url.split("://", 1)[1].split("@", 1)[0]


def _run(engine: Engine) -> None:
    Worker(engine, poll_interval=0.05).run(until_idle=True)


def _result(engine: Engine, execution_id: str, tenant: str) -> Any:
    (result,) = [
        e.record.result
        for e in engine.history(execution_id, tenant=tenant)
        if isinstance(e.record, StepSucceeded)
    ]
    return result


def _approved_invoice(engine: Engine, tenant: str, invoice_id: str) -> str:
    x = engine.create_execution("InvoiceApproval", tenant=tenant)
    payload = {"invoice": {"id": invoice_id, "total": 50.0, "customer_id": "C", "currency": "EUR"}}
    engine.enqueue_event(x, "CreateInvoice", tenant=tenant, role="clerk", payload=payload)
    engine.enqueue_event(
        x, "ApproveInvoice", tenant=tenant, role="manager", payload={"approved_by": "m"}
    )
    return x


def test_a_confined_action_cannot_lift_the_wall(confined: Engine, pg_action_url: str) -> None:
    victim = _approved_invoice(confined, ACME, "A-1")
    _approved_invoice(confined, GLOBEX, "G-1")
    x = confined.create_execution("Escape", tenant=GLOBEX)
    confined.enqueue_event(x, "Escape", tenant=GLOBEX, payload={"victim": victim})
    _run(confined)
    result = _result(confined, x, GLOBEX)
    assert result["role"] == _role(pg_action_url)
    assert result["own"] == [GLOBEX]
    # "*" is not honoured for a confined role: no tenant is called "*", so no row at all
    assert result["claim"] == "*"
    assert result["executions"] == []
    assert result["invoices"] == []
    assert result["tampered"] == 0
    # the rest of the ledger is out of reach altogether
    for door in ("leases", "workers", "events_deleted", "confinement_lifted", "wall_key"):
        assert result[door] == "InsufficientPrivilege", door
    assert result["after_reset"] == []
    # naming acme instead: the seal is globex's, so the wall shows nothing at all
    assert result["named"] == []
    assert result["named_invoices"] == []
    # globex's rows may not point at acme's execution
    assert result["forged_event"] == "ForeignKeyViolation"
    assert result["forged_wakeup"] == "ForeignKeyViolation"
    for tenant in (ACME, GLOBEX):
        rows = invoice_app.rows(confined, tenant)
        assert [r["status"] for r in rows["invoices"]] == ["payment_scheduled"]
        assert len(rows["payments"]) == 1


def test_the_example_and_the_built_in_database_actions_work_confined(confined: Engine) -> None:
    x = _approved_invoice(confined, ACME, "A-1")
    s = confined.create_execution("SideEffects", tenant=ACME)
    confined.enqueue_event(s, "Go", tenant=ACME)
    _run(confined)
    assert confined.get_execution(x, tenant=ACME).state == "approved"
    rows = invoice_app.rows(confined, ACME)
    assert [r["status"] for r in rows["invoices"]] == ["payment_scheduled"]
    assert len(rows["payments"]) == 1
    # emit_event appended Ping (processed); schedule_event armed a timer
    assert confined.get_execution(s, tenant=ACME).state == "pinged"
    (timer,) = confined.timers(s, tenant=ACME)
    assert (timer.event, timer.kind, timer.state) == ("Later", "step", "armed")


def test_a_role_that_is_not_confined_runs_no_action(
    pg_url: str, pg_action_url: str, db_url: str
) -> None:
    # the database was emptied: the role is not (or no longer) registered as confined
    engine = Engine(pg_url, action_db=pg_action_url)
    try:
        invoice_app.setup(engine)
        with engine.store.write(tenant=ALL_TENANTS) as conn:
            for table in reversed(invoice_app.metadata.sorted_tables):
                conn.execute(table.delete())
        x = engine.create_execution("InvoiceApproval", tenant=ACME)
        payload = {"invoice": {"id": "A-1", "total": 5.0, "customer_id": "C"}}
        engine.enqueue_event(x, "CreateInvoice", tenant=ACME, role="clerk", payload=payload)
        token = engine.store.take_lease(x, "w-1", 30, tenant=ACME)
        assert token is not None
        with pytest.raises(ConfinementError, match="db confine"):
            engine.process(x, tenant=ACME, lease=Lease(owner="w-1", token=token, ttl=30))
        # nothing ran, nothing was recorded: the event waits, for a worker with a fit role
        assert invoice_app.rows(engine, ACME)["invoices"] == []
        assert engine.get_execution(x, tenant=ACME).state == "draft"
    finally:
        engine.close()


def test_confining_a_superuser_or_a_missing_role_is_refused(confined: Engine) -> None:
    with confined.store.write() as conn, pytest.raises(ConfinementError, match="superuser"):
        confine_role(conn, "postgres")
    with confined.store.write() as conn, pytest.raises(InvalidInputError, match="no PostgreSQL"):
        confine_role(conn, "nobody_by_that_name")


def test_the_role_for_actions_must_reach_the_ledgers_database(
    pg_url: str, db_url: str, tmp_path: Any
) -> None:
    elsewhere = pg_url.rsplit("/", 1)[0] + "/postgres"
    with pytest.raises(InvalidInputError, match="ledger's own database"):
        SQLStore(pg_url, action_url=elsewhere)
    with pytest.raises(InvalidInputError, match="needs PostgreSQL"):
        SQLStore(f"sqlite:///{tmp_path}/x.db", action_url=pg_url)


def test_a_confined_step_is_fenced_like_any_other(confined: Engine) -> None:
    store = confined.store
    x = confined.create_execution("Escape", tenant=ACME)
    with store.write(tenant=ALL_TENANTS) as conn:
        conn.execute(
            sa.text(
                "INSERT INTO lf_leases (execution_id, owner, token, expires_at, tenant) "
                "VALUES (:x, 'w-1', 3, 1e12, 'acme')"
            ),
            {"x": x},
        )
    with store.action_write("READ COMMITTED", tenant=ACME) as conn:
        assert conn.engine is store.action_engine
        store.check_lease(conn, x, "w-1", 3)
        with pytest.raises(LeaseLostError, match="taken over"):
            store.check_lease(conn, x, "w-1", 2)
    # another tenant's transaction gets no answer about acme's lease, let alone a lock on it
    with store.action_write("READ COMMITTED", tenant=GLOBEX) as conn, pytest.raises(LeaseLostError):
        store.check_lease(conn, x, "w-1", 3)


def test_a_wall_put_up_before_confinement_is_brought_up_to_date(confined: Engine) -> None:
    with confined.store.write() as conn:
        conn.exec_driver_sql("CREATE TABLE old_notes (tenant text, body text)")
        conn.exec_driver_sql("ALTER TABLE old_notes ENABLE ROW LEVEL SECURITY")
        rule = (
            "tenant = current_setting('ledgerflow.tenant', true) "
            "OR current_setting('ledgerflow.tenant', true) = '*'"
        )
        conn.exec_driver_sql(
            f"CREATE POLICY ledgerflow_tenant_wall ON old_notes USING ({rule}) WITH CHECK ({rule})"
        )
    try:
        with confined.store.write() as conn:
            assert tenant_wall(conn, "old_notes") is True
            assert tenant_wall(conn, "old_notes") is False
            qual = conn.exec_driver_sql(
                "SELECT qual FROM pg_policies WHERE tablename = 'old_notes'"
            ).scalar_one()
        assert "lf_wall_tenant" in qual
    finally:
        with confined.store.write() as conn:
            conn.exec_driver_sql("DROP TABLE old_notes")


def test_the_confine_command(confined: Engine, pg_url: str, pg_action_url: str) -> None:
    cli = Cli(pg_url)
    role = _role(pg_action_url)
    assert cli.json("db", "confine", role, "--table", "invoices") == {
        "role": role,
        "tables": ["invoices"],
    }
    refused = cli("db", "confine", "postgres", check=False)
    assert refused.returncode != 0
    assert "superuser" in refused.stderr


def test_an_actions_session_leaves_nothing_to_the_next_transaction(confined: Engine) -> None:
    store = confined.store
    with store.action_write("READ COMMITTED", tenant=ACME) as conn:
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        # a temporary table shadowing the ledger's, and a setting, left for whoever comes next
        conn.exec_driver_sql("CREATE TEMP TABLE lf_action_results (LIKE lf_action_results)")
        conn.exec_driver_sql("SET statement_timeout = 1234")
        conn.exec_driver_sql("LISTEN snooping")
    with store.action_write("READ COMMITTED", tenant=GLOBEX) as conn:
        assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one() == pid  # reused
        shadow = conn.exec_driver_sql("SELECT to_regclass('pg_temp.lf_action_results')")
        assert shadow.scalar() is None
        timeout = conn.exec_driver_sql("SELECT current_setting('statement_timeout')")
        assert timeout.scalar_one() == "0"
        listening = conn.exec_driver_sql("SELECT count(*) FROM pg_listening_channels()")
        assert listening.scalar_one() == 0


def test_roles_that_could_get_past_the_wall_are_not_confined(confined: Engine, pg_url: str) -> None:
    name = f"{_role(pg_url)}_creator"
    database = pg_url.rsplit("/", 1)[1]
    server = PG_ADMIN.rsplit("/", 1)[0]

    def refused(match: str) -> None:
        with confined.store.write() as conn, pytest.raises(ConfinementError, match=match):
            confine_role(conn, name)

    def admin(statement: str, *, here: bool = False) -> None:
        with psycopg.connect(f"{server}/{database}" if here else PG_ADMIN, autocommit=True) as c:
            c.execute(statement)

    admin(f'CREATE ROLE "{name}" LOGIN CREATEROLE')
    try:
        refused("create roles")
        admin(f'ALTER ROLE "{name}" NOCREATEROLE REPLICATION')
        refused("replicate")
        admin(f'ALTER ROLE "{name}" NOREPLICATION')
        admin("CREATE TABLE owned_by_it (tenant text)", here=True)
        admin(f'ALTER TABLE owned_by_it OWNER TO "{name}"', here=True)
        refused("owns")
        admin("DROP TABLE owned_by_it", here=True)
        admin(f'GRANT CREATE ON SCHEMA public TO "{name}"', here=True)
        refused("create objects")
        admin(f'REVOKE CREATE ON SCHEMA public FROM "{name}"', here=True)
        admin(f'ALTER ROLE "{name}" SET statement_timeout = 1')
        refused("RESET ALL")
        admin(f'ALTER ROLE "{name}" RESET ALL')
        admin(
            f'GRANT EXECUTE ON FUNCTION pg_catalog.pg_cancel_backend(integer) TO "{name}"',
            here=True,
        )
        refused("pg_cancel_backend")
        admin(
            f'REVOKE EXECUTE ON FUNCTION pg_catalog.pg_cancel_backend(integer) FROM "{name}"',
            here=True,
        )
        with confined.store.write() as conn:
            confine_role(conn, name)  # nothing left in the way
    finally:
        admin("DROP TABLE IF EXISTS owned_by_it", here=True)
        admin(f'DROP OWNED BY "{name}"', here=True)
        admin(f'DROP ROLE IF EXISTS "{name}"')


def test_a_role_changed_after_it_was_confined_runs_no_action(
    confined: Engine, pg_url: str, pg_action_url: str
) -> None:
    # the confined role saves a setting of its own (any role may): every new session would
    # take it on, so a new connection refuses to run actions until an administrator resets it
    role = _role(pg_action_url)
    store = SQLStore(pg_url, action_url=pg_action_url)
    try:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'ALTER ROLE "{role}" SET default_transaction_read_only = on')
        with (
            pytest.raises(ConfinementError, match="RESET ALL"),
            store.action_write("READ COMMITTED", tenant=ACME),
        ):
            pass
    finally:
        store.close()
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'ALTER ROLE "{role}" RESET ALL')


def test_a_statement_cancelled_from_another_session_is_tried_again_a_timeout_is_not(
    db_url: str,
) -> None:
    engine = sa.create_engine(PG_ADMIN.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            with pytest.raises(sa.exc.DBAPIError) as cancelled:
                conn.exec_driver_sql("SELECT pg_cancel_backend(pg_backend_pid()), pg_sleep(5)")
            conn.rollback()
            conn.exec_driver_sql("SET statement_timeout = 10")
            with pytest.raises(sa.exc.DBAPIError) as timed_out:
                conn.exec_driver_sql("SELECT pg_sleep(5)")
    finally:
        engine.dispose()
    assert _transient(cancelled.value)
    assert not _transient(timed_out.value)


def test_a_table_without_its_wall_is_not_granted(confined: Engine, pg_action_url: str) -> None:
    with confined.store.write() as conn:
        conn.exec_driver_sql("CREATE TABLE open_notes (tenant text, body text)")
    try:
        with confined.store.write() as conn, pytest.raises(ConfinementError, match="tenant_wall"):
            confine_role(conn, _role(pg_action_url), tables=["open_notes"])
        with confined.store.write() as conn:
            tenant_wall(conn, "open_notes")
            confine_role(conn, _role(pg_action_url), tables=["open_notes"])
    finally:
        with confined.store.write() as conn:
            conn.exec_driver_sql("DROP TABLE open_notes")


def test_where_the_role_for_actions_applies(
    pg_url: str, pg_action_url: str, db_url: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SQLStore(pg_url)
    try:
        with pytest.raises(InvalidInputError, match="action_url"):
            Engine(store, action_db=pg_action_url)
    finally:
        store.close()
    # the environment's role is for PostgreSQL stores: an SQLite engine ignores it
    monkeypatch.setenv("LEDGERFLOW_ACTION_DB", pg_action_url)
    sqlite = Engine(f"sqlite:///{tmp_path}/ledger.db")
    assert sqlite.store.action_engine is None
    sqlite.close()
    postgres = Engine(pg_url)
    assert postgres.store.action_engine is not None
    postgres.close()
    # the default port is the port
    explicit = pg_action_url.replace("127.0.0.1/", "127.0.0.1:5432/")
    SQLStore(pg_url.replace(":5432/", "/"), action_url=explicit).close()


def test_the_prerequisites_command_prints_what_a_superuser_runs(
    pg_url: str, pg_action_url: str, db_url: str
) -> None:
    printed = Cli(pg_url)("db", "confine-prerequisites").stdout.splitlines()
    assert printed == [f"{statement};" for statement in confinement_prerequisites()]
    assert any("pg_cancel_backend" in line for line in printed)


def test_a_confined_role_records_a_result_only_under_the_lease(confined: Engine) -> None:
    """The statement that records a database action's result checks the lease through the
    owner's function (a confined role may not read the leases), for its own tenant."""
    check_fenced_results(
        confined,
        lambda tenant: confined.store.action_write("READ COMMITTED", tenant=tenant),
    )


def test_a_confined_role_acting_for_another_tenant_records_no_result(confined: Engine) -> None:
    x = confined.create_execution("InvoiceApproval", tenant="acme")
    token = confined.store.take_lease(x, "w1", 30, tenant="acme")
    assert token is not None
    with (
        pytest.raises(LeaseLostError),
        confined.store.action_write("READ COMMITTED", tenant="globex") as conn,
    ):
        confined.store.insert_action_result(conn, lease=("w1", token), **fenced_record("k1", x))
    with confined.store.read(tenant=ALL_TENANTS) as conn:
        assert confined.store.action_results_for(conn, x, ["ev-1"], tenant="acme") == {}
