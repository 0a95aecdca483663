"""The store's fixed statements run on psycopg directly on PostgreSQL (ledgerflow.store.direct):
the same rows, counts and errors as through SQLAlchemy, and SQLAlchemy whenever it must see
them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from ledgerflow.errors import StoreUnavailableError
from ledgerflow.store import ALL_TENANTS, direct
from ledgerflow.store.schema import events, executions
from ledgerflow.store.sql import SQLStore

PG_ADMIN = os.environ.get("LEDGERFLOW_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
TENANT = "acme"

INSERT_EXECUTION = executions.insert()
INSERT_EVENTS = events.insert()
EVENTS_OF = (
    sa.select(events)
    .where(events.c.execution_id == sa.bindparam("x"), events.c.seq > sa.bindparam("after"))
    .order_by(events.c.seq)
)
EVENTS_IN = sa.select(events.c.seq).where(events.c.seq.in_(sa.bindparam("seqs", expanding=True)))
SET_OUTCOME = (
    events.update()
    .where(events.c.execution_id == sa.bindparam("x"))
    .values(outcome=sa.bindparam("outcome"), detail=None)
)


@pytest.fixture
def store(db_url: str) -> Iterator[SQLStore]:
    store = SQLStore(db_url)
    yield store
    store.close()


def _execution(x: str) -> dict[str, Any]:
    return {
        "id": x,
        "tenant": TENANT,
        "workflow": "W",
        "version": 1,
        "state": "draft",
        "context": {"amount": 12.5, "tags": ["a", None], "nested": {"ok": True}},
        "status": "running",
        "projection_seq": 0,
        "decided_seq": 0,
        "created_at": 1.25,
        "updated_at": 1.25,
    }


def _event(x: str, seq: int, **changes: Any) -> dict[str, Any]:
    row = {
        "execution_id": x,
        "seq": seq,
        "event_id": f"{x}-{seq}",
        "tenant": TENANT,
        "kind": "event_received",
        "name": "Submit",
        "body": {"payload": {"amount": seq, "note": "é ✓"}, "none": None},
        "role": None,
        "client_key": None,
        "status": "pending",
        "outcome": None,
        "detail": None,
        "created_at": 2.5,
        "processed_at": None,
    }
    return {**row, **changes}


def _fill(store: SQLStore, x: str, n: int) -> None:
    with store.write(tenant=TENANT) as conn:
        direct.run(conn, INSERT_EXECUTION, _execution(x))
        direct.run(conn, INSERT_EVENTS, [_event(x, seq) for seq in range(1, n + 1)])


def _through_sqlalchemy(conn: sa.Connection, statement: Any, params: Any) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in conn.execute(statement, params)]


def test_rows_and_counts_are_sqlalchemys(store: SQLStore) -> None:
    """Every column type the ledger uses (JSON, nulls, floats, text beyond ASCII) reads back
    as SQLAlchemy reads it, by attribute and by position; counts are the rows changed."""
    _fill(store, "x1", 3)
    with store.write(tenant=TENANT) as conn:
        params = {"x": "x1", "after": 1}
        ours = direct.run(conn, EVENTS_OF, params)
        rows = ours.all()
        assert [tuple(row) for row in rows] == _through_sqlalchemy(conn, EVENTS_OF, params)
        assert [row.seq for row in rows] == [2, 3]
        assert rows[0].body == {"payload": {"amount": 2, "note": "é ✓"}, "none": None}
        assert rows[0].created_at == 2.5
        assert rows[0].processed_at is None
        changed = direct.run(conn, SET_OUTCOME, {"x": "x1", "outcome": "done"})
        assert changed.rowcount == 3
        assert direct.run(conn, SET_OUTCOME, {"x": "nobody", "outcome": "done"}).rowcount == 0
        assert direct.run(conn, EVENTS_OF, {"x": "x1", "after": 2}).scalar_one() == "x1"
        assert direct.run(conn, EVENTS_OF, {"x": "x1", "after": 9}).first() is None
        assert direct.run(conn, EVENTS_OF, {"x": "x1", "after": 9}).scalar() is None


def test_one_and_scalar_one_want_exactly_one_row(store: SQLStore) -> None:
    _fill(store, "x1", 2)
    with store.read(tenant=TENANT) as conn:
        with pytest.raises(sa.exc.NoResultFound):
            direct.run(conn, EVENTS_OF, {"x": "x1", "after": 5}).one()
        with pytest.raises(sa.exc.MultipleResultsFound):
            direct.run(conn, EVENTS_OF, {"x": "x1", "after": 0}).scalar_one()


def test_a_unique_violation_is_sqlalchemys_integrity_error(store: SQLStore) -> None:
    """The ledger's optimistic concurrency check (a seq taken) is caught as
    sqlalchemy.exc.IntegrityError by its callers: it must stay that, and the transaction
    rolls back whole."""
    _fill(store, "x1", 1)

    def append_two() -> None:
        with store.write(tenant=TENANT) as conn:
            direct.run(conn, INSERT_EVENTS, _event("x1", 2, event_id="new"))
            direct.run(conn, INSERT_EVENTS, _event("x1", 1, event_id="again"))

    with pytest.raises(sa.exc.IntegrityError) as caught:
        append_two()
    if store.dialect == "postgresql":
        assert isinstance(caught.value.orig, psycopg.errors.UniqueViolation)
        assert not caught.value.connection_invalidated
    with store.read(tenant=TENANT) as conn:
        assert [r.seq for r in direct.run(conn, EVENTS_OF, {"x": "x1", "after": 0})] == [1]


def test_a_statement_with_an_expanding_list_goes_through_sqlalchemy(store: SQLStore) -> None:
    _fill(store, "x1", 4)
    with store.read(tenant=TENANT) as conn:
        seqs = direct.run(conn, EVENTS_IN, {"seqs": [2, 4, 9]}).scalars().all()
        assert sorted(seqs) == [2, 4]


# a literal percent sign, one parameter used twice, and SQL longer than psycopg caches the
# parsing of (4 KiB): each once wrongly handled by one placeholder style or another
NAMED_LIKE = sa.text(
    "SELECT seq FROM lf_events WHERE execution_id = :x AND name LIKE 'Sub%' "
    "AND seq > :after AND seq <> :after ORDER BY seq"
)
PERCENT = sa.text("SELECT '5%' = :p AS literal, 7 % 3 AS modulo, :p AS again")
LONG = sa.text(
    "SELECT count(*) FROM lf_events WHERE execution_id = :x AND ("
    + " OR ".join(f"event_id = :e{n}" for n in range(300))
    + ")"
)


def test_percent_signs_repeated_names_and_long_statements_run_as_written(
    store: SQLStore,
) -> None:
    _fill(store, "x1", 4)
    with store.read(tenant=TENANT) as conn:
        params = {"x": "x1", "after": 1}
        assert [r.seq for r in direct.run(conn, NAMED_LIKE, params)] == [2, 3, 4]
        assert _through_sqlalchemy(conn, NAMED_LIKE, params) == [(2,), (3,), (4,)]
        # a doubled percent sign would be another literal, and no operator at all
        row = direct.run(conn, PERCENT, {"p": "5%"}).one()
        assert (bool(row.literal), row.modulo, row.again) == (True, 1, "5%")
        wanted = {f"e{n}": f"x1-{n}" for n in range(300)}
        assert len(str(LONG)) > 4096
        for _ in range(3):  # and again: nothing is kept wrongly from one call to the next
            assert direct.run(conn, LONG, {"x": "x1", **wanted}).scalar_one() == 4


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_psycopg_runs_them_on_postgresql(store: SQLStore) -> None:
    _fill(store, "x1", 2)
    with store.read(tenant=TENANT) as conn:
        assert isinstance(direct.run(conn, EVENTS_OF, {"x": "x1", "after": 0}), direct.Rows)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_listeners_of_sqlalchemy_see_every_statement(store: SQLStore) -> None:
    """Tracing that hooks SQLAlchemy's cursor events (and tests counting statements) must
    not miss the statements that would otherwise skip SQLAlchemy."""
    _fill(store, "x1", 2)
    seen: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    sa.event.listen(store.engine, "before_cursor_execute", before)
    try:
        with store.read(tenant=TENANT) as conn:
            rows = direct.run(conn, EVENTS_OF, {"x": "x1", "after": 0}).all()
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", before)
    assert [row.seq for row in rows] == [1, 2]
    assert any(s.startswith("SELECT set_config") for s in seen)
    assert any("FROM lf_events" in s for s in seen)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_connection_cut_under_a_direct_statement_is_a_store_error(store: SQLStore) -> None:
    """Cut by the server between two statements, the next one fails as a lost connection
    (the store's StoreUnavailableError, the connection invalidated), and the next
    transaction gets a new connection."""
    _fill(store, "x1", 1)

    def cut_then_read() -> None:
        with store.read(tenant=ALL_TENANTS) as conn:
            pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
            with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            direct.run(conn, EVENTS_OF, {"x": "x1", "after": 0})

    with pytest.raises(StoreUnavailableError, match="lost the connection to the database"):
        cut_then_read()
    with store.read(tenant=TENANT) as conn:
        assert direct.run(conn, EVENTS_OF, {"x": "x1", "after": 0}).scalar() == "x1"


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("confined", [False, True], ids=["ledger-role", "confined-role"])
def test_every_transaction_runs_at_the_level_it_asked_for(
    db_url: str, pg_action_url: str, confined: bool
) -> None:
    """The server's default level is not set on a connection again (a saved round of
    setting it and setting it back), so a connection must never carry a level asked for by
    an earlier transaction into one that asked for the default, on one pooled connection as
    on several."""
    from ledgerflow.store import confine_role

    store = SQLStore(db_url, action_url=pg_action_url if confined else None)
    if confined:
        with store.write() as conn:
            confine_role(conn, pg_action_url.split("://", 1)[1].split("@", 1)[0])
    levels = ["READ COMMITTED", "SERIALIZABLE", "READ COMMITTED", "REPEATABLE READ"] * 3
    try:
        seen = []
        for level in levels:
            with store.action_write(level, tenant=TENANT) as conn:
                seen.append(conn.execute(sa.text("SHOW transaction_isolation")).scalar_one())
            with store.write(tenant=TENANT) as conn:
                default = conn.execute(sa.text("SHOW transaction_isolation")).scalar_one()
                assert default == "read committed"
        assert seen == [level.lower() for level in levels]
    finally:
        store.close()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_level_a_session_set_for_itself_does_not_reach_a_later_transaction(
    store: SQLStore,
) -> None:
    """SQL of an action may change its session's default level; a later transaction asking
    for the server's default on that pooled connection still runs at it."""
    with store.action_write("READ COMMITTED", tenant=TENANT) as conn:
        conn.execute(
            sa.text("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        )
        pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    with store.action_write("READ COMMITTED", tenant=TENANT) as conn:
        assert conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one() == pid
        level = conn.execute(sa.text("SHOW transaction_isolation")).scalar_one()
    assert level == "read committed"


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("tenant", ["acme", "o'brien \\ co", "ünï — 東京", ""])
def test_a_transaction_begins_acting_for_its_tenant_and_only_it(
    store: SQLStore, tenant: str
) -> None:
    """The transaction opens with its tenant set (quotes, backslashes and any text kept as
    they are), behind the wall from its first statement, and the setting ends with it."""
    with store.write(tenant=tenant) as conn:
        driver = conn.connection.driver_connection
        assert driver is not None
        assert driver.pgconn.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert conn.execute(sa.text("SELECT current_setting('ledgerflow.tenant')")).scalar() == (
            tenant
        )
        conn.execute(INSERT_EXECUTION, {**_execution("x1"), "tenant": tenant})
        pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    with store.read(tenant="someone-else") as conn:
        assert conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one() == pid
        assert conn.execute(sa.text("SELECT count(*) FROM lf_executions")).scalar_one() == 0
    with store.read(tenant=tenant) as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM lf_executions")).scalar_one() == 1
    raw = psycopg.connect(
        store.engine.url.render_as_string(hide_password=False).replace(
            "postgresql+psycopg://", "postgresql://"
        )
    )
    with raw:
        # outside any transaction of the store's, nothing is set: the setting was local
        assert raw.execute("SELECT current_setting('ledgerflow.tenant', true)").fetchone() in (
            (None,),
            ("",),
        )


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_the_begin_is_psycopgs_own_with_the_tenant_in_the_same_round_trip(
    store: SQLStore,
) -> None:
    """One message opens the transaction and sets the tenant: the connection is in a
    transaction, at the level asked for, and read-only when asked, before any statement of
    the caller's; an open transaction or an autocommit connection is left to the caller."""
    with store.engine.connect() as conn:
        conn.begin()
        driver = conn.connection.driver_connection
        assert driver is not None
        driver.read_only = True
        assert direct.begin_with_tenant(conn, TENANT) is True
        assert driver.pgconn.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert conn.execute(sa.text("SHOW transaction_read_only")).scalar() == "on"
        assert conn.execute(sa.text("SELECT current_setting('ledgerflow.tenant')")).scalar() == (
            TENANT
        )
        assert direct.begin_with_tenant(conn, "other") is False  # already open: nothing sent
        assert conn.execute(sa.text("SELECT current_setting('ledgerflow.tenant')")).scalar() == (
            TENANT
        )
        conn.rollback()
        driver.read_only = None
    with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        assert direct.begin_with_tenant(conn, TENANT) is False


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_tenant_postgresql_cannot_hold_is_refused_with_nothing_begun(store: SQLStore) -> None:
    """A tenant with a NUL character fails as a database error of SQLAlchemy's, before
    anything is sent, and the pooled connection serves the next transaction."""
    with pytest.raises(sa.exc.DBAPIError, match="NUL"), store.write(tenant="a\x00b"):
        pass  # pragma: no cover - the transaction never begins
    with store.write(tenant=TENANT) as conn:
        assert conn.execute(sa.text("SELECT current_setting('ledgerflow.tenant')")).scalar() == (
            TENANT
        )


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_begin_on_a_connection_the_server_dropped_is_replaced_once(store: SQLStore) -> None:
    """The combined begin is the transaction's first message: a pooled connection the server
    dropped since its last use fails it with nothing of the caller's sent, and is replaced."""
    with store.read(tenant=TENANT) as conn:
        pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with store.write(tenant=TENANT) as conn:
        assert conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one() != pid
        assert conn.execute(sa.text("SELECT current_setting('ledgerflow.tenant')")).scalar() == (
            TENANT
        )


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_the_cache_of_begin_commands_starts_over_when_full(
    store: SQLStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The combined commands are kept per (BEGIN, tenant) up to a bound: past it the cache
    starts over, and every tenant, kept or made again, still begins as itself."""
    monkeypatch.setattr(direct, "_BEGUN_MAX", 3)
    monkeypatch.setattr(direct, "_BEGUN", {})
    tenants = [f"tenant-{n}" for n in range(7)] + ["tenant-6", "tenant-0"]
    for tenant in tenants:
        with store.write(tenant=tenant) as conn:
            setting = conn.execute(sa.text("SELECT current_setting('ledgerflow.tenant')"))
            assert setting.scalar() == tenant
        assert 1 <= len(direct._BEGUN) <= 3
    kept = {t for _, t in direct._BEGUN}
    assert "tenant-0" in kept  # made again after the cache started over
    assert kept <= set(tenants)
