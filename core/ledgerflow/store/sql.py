"""The SQL event store: one implementation for SQLite (embedded, the default) and PostgreSQL.

Transactions are explicit. On SQLite every write transaction starts with ``BEGIN IMMEDIATE`` (one
writer at a time, waiting up to the busy timeout) and every read with ``BEGIN``, so reads are
repeatable; the database runs in WAL mode with ``synchronous=FULL``, so a committed event
survives a crash of the machine. On PostgreSQL (psycopg 3) transactions run at READ COMMITTED,
claims use ``FOR UPDATE SKIP LOCKED``, and enqueued events ``NOTIFY`` waiting workers.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import secrets
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool

from ledgerflow.errors import (
    ConfinementError,
    InvalidInputError,
    LeaseLostError,
    SchemaError,
    StoreUnavailableError,
    first_line,
)
from ledgerflow.model import Record, State
from ledgerflow.store import codec, direct
from ledgerflow.store.schema import (
    action_results,
    circuit_breakers,
    confined_roles,
    dead_letters,
    definitions,
    events,
    executions,
    leases,
    outbox,
    snapshots,
    timers,
    wall_secret,
    workers,
)

__all__ = [
    "ALL_TENANTS",
    "NOTIFY_CHANNEL",
    "SQLStore",
    "StoredRecord",
    "confine_role",
    "confinement_prerequisites",
    "current_tenant_scope",
    "normalise_url",
    "tenant_scope",
    "tenant_wall",
]

NOTIFY_CHANNEL = "ledgerflow_wakeup"

ALL_TENANTS = "*"
"""The scope of the work that crosses tenants by nature (claiming wake-ups, relaying the
outbox, firing due timers, dead letters): never a tenant's name."""

_TENANT_SCOPE: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "ledgerflow_tenant_scope", default=None
)
_SET_TENANT = sa.text("SELECT set_config('ledgerflow.tenant', :tenant, true)")
_SET_SEALED_TENANT = sa.text(
    "SELECT set_config('ledgerflow.tenant', :tenant, true) AS tenant, "
    "set_config('ledgerflow.tenant_seal', :seal, true) AS seal"
)


# The statements of the hot paths, built once: building a statement costs several times more
# than running it on SQLite (SQLAlchemy caches the compiled form either way).
_EXECUTION_ROW = sa.select(executions).where(
    executions.c.id == sa.bindparam("id"), executions.c.tenant == sa.bindparam("tenant")
)
# FOR NO KEY UPDATE: appenders take turns on it, while the foreign keys of the execution's
# rows (which take FOR KEY SHARE) never wait for it
_LOCKED_EXECUTION_ROW = _EXECUTION_ROW.with_for_update(key_share=True)
_LOCK_EXECUTION = (
    sa.select(executions.c.id)
    .where(executions.c.id == sa.bindparam("id"))
    .with_for_update(key_share=True)
)
_LAST_SEQ = sa.select(sa.func.coalesce(sa.func.max(events.c.seq), 0)).where(
    events.c.execution_id == sa.bindparam("execution_id")
)
_EVENT_BY_KEY = sa.select(events.c.event_id).where(
    events.c.execution_id == sa.bindparam("execution_id"),
    events.c.client_key == sa.bindparam("client_key"),
)
_RECORDS = (
    sa.select(events)
    .where(
        events.c.execution_id == sa.bindparam("execution_id"),
        events.c.tenant == sa.bindparam("tenant"),
        events.c.seq > sa.bindparam("after"),
    )
    .order_by(events.c.seq)
)
_SET_EVENT_OUTCOME = (
    events.update()
    .where(
        events.c.execution_id == sa.bindparam("key_execution_id"),
        events.c.seq == sa.bindparam("key_seq"),
    )
    .values(
        status=sa.bindparam("status"),
        outcome=sa.bindparam("outcome"),
        detail=sa.bindparam("detail"),
        processed_at=sa.bindparam("processed_at"),
    )
)
_FENCE = (
    leases.update()
    .where(
        leases.c.execution_id == sa.bindparam("key_execution_id"),
        leases.c.owner == sa.bindparam("key_owner"),
        leases.c.token == sa.bindparam("key_token"),
    )
    .values(expires_at=sa.bindparam("expires_at"))
)
_FENCED = _FENCE.returning(leases.c.execution_id).cte("fenced")
# the lease renewed (its row locked) first, then the execution's row locked
_FENCE_AND_LOCK = (
    sa.select(executions.c.id)
    .join(_FENCED, _FENCED.c.execution_id == executions.c.id)
    .with_for_update(key_share=True, of=executions)
)
_CHECK_LEASE = sa.select(leases.c.token).where(
    leases.c.execution_id == sa.bindparam("execution_id"),
    leases.c.owner == sa.bindparam("owner"),
    leases.c.token == sa.bindparam("token"),
)
_CHECK_LEASE_SHARED = _CHECK_LEASE.with_for_update(read=True)


def _take_lease_statement(insert: Callable[[sa.Table], Any]) -> Any:
    """The upsert that takes a lease: a new row with token 1, or the row of a free or expired
    lease taken over with the token one up (the tenant kept unless a new one is given)."""
    statement = insert(leases).values(
        execution_id=sa.bindparam("execution_id"),
        owner=sa.bindparam("owner"),
        token=1,
        expires_at=sa.bindparam("expires_at"),
        tenant=sa.bindparam("tenant", type_=leases.c.tenant.type),
    )
    return statement.on_conflict_do_update(
        index_elements=[leases.c.execution_id],
        set_={
            "owner": statement.excluded.owner,
            "token": leases.c.token + 1,
            "expires_at": statement.excluded.expires_at,
            "tenant": sa.func.coalesce(statement.excluded.tenant, leases.c.tenant),
        },
        where=leases.c.expires_at <= sa.bindparam("now"),
    ).returning(leases.c.token)


def _new_lease_statement(insert: Callable[[sa.Table], Any]) -> Any:
    """A new lease row with token 1, or nothing if the execution has one already."""
    return (
        insert(leases)
        .values(
            execution_id=sa.bindparam("execution_id"),
            owner=sa.bindparam("owner"),
            token=1,
            expires_at=sa.bindparam("expires_at"),
            tenant=sa.bindparam("tenant", type_=leases.c.tenant.type),
        )
        .on_conflict_do_nothing(index_elements=[leases.c.execution_id])
        .returning(leases.c.token)
    )


_INSERT_NEW_LEASE = {
    "postgresql": _new_lease_statement(postgresql.insert),
    "sqlite": _new_lease_statement(sqlite.insert),
}
_TAKE_LEASE = {
    "postgresql": _take_lease_statement(postgresql.insert),
    "sqlite": _take_lease_statement(sqlite.insert),
}
_HELD_LEASE = sa.and_(
    leases.c.execution_id == sa.bindparam("key_execution_id"),
    leases.c.owner == sa.bindparam("key_owner"),
    leases.c.token == sa.bindparam("key_token"),
)
_RELEASE_LEASE = leases.update().where(_HELD_LEASE).values(expires_at=0.0)
_RENEW_LEASE = (
    leases.update()
    .where(_HELD_LEASE, leases.c.expires_at > 0)
    .values(expires_at=sa.bindparam("expires_at"))
)
_RENEW_PARKED_LEASE = _RENEW_LEASE.values(tenant=None)
_SNAPSHOT_STATES = (
    sa.select(snapshots.c.state)
    .where(
        snapshots.c.execution_id == sa.bindparam("execution_id"),
        snapshots.c.tenant == sa.bindparam("tenant"),
    )
    .order_by(snapshots.c.seq)
)
_CANCEL_TIMERS = (
    timers.update()
    .where(timers.c.execution_id == sa.bindparam("key_execution_id"), timers.c.state == "armed")
    .values(state="cancelled", cancelled_at=sa.bindparam("cancelled_at"))
)
_CANCEL_STATE_TIMERS = _CANCEL_TIMERS.where(timers.c.kind == "state")
_INSERT_EXECUTION = executions.insert()
_INSERT_EVENTS = events.insert()
_INSERT_WAKEUPS = outbox.insert()
_INSERT_TIMERS = timers.insert()
_NOTIFY = sa.select(sa.func.pg_notify(NOTIFY_CHANNEL, sa.bindparam("execution_id", type_=sa.Text)))
_INSERT_ACTION_RESULT = action_results.insert()
# results recorded with an event's commit (actions not checkpointed): the first result
# recorded under a key stays, as everywhere
_INSERT_LATE_RESULTS = sqlite.insert(action_results).on_conflict_do_nothing(
    index_elements=[action_results.c.key]
)
# on PostgreSQL all of them in one statement, whatever their number: one row set from one
# JSON parameter (its null read as SQL NULL, stored as JSON's null, as a result is stored)
_INSERT_LATE_RESULTS_PG = sa.text(
    "INSERT INTO lf_action_results "
    "(key, tenant, execution_id, event_id, step_id, action, result, attempts, created_at) "
    "SELECT r.key, r.tenant, r.execution_id, r.event_id, r.step_id, r.action, "
    "coalesce(r.result, 'null'::jsonb), "
    "r.attempts, r.created_at FROM jsonb_to_recordset(:rows) AS r(key text, tenant text, "
    "execution_id text, event_id text, step_id text, action text, result jsonb, "
    "attempts integer, created_at double precision) "
    "ON CONFLICT (key) DO NOTHING"
).bindparams(sa.bindparam("rows", type_=postgresql.JSONB()))
_RESULT_COLUMNS = (
    "key",
    "tenant",
    "execution_id",
    "event_id",
    "step_id",
    "action",
    "result",
    "attempts",
    "created_at",
)


_APPEND_IN_ONE_STATEMENT = 16
"""The most ledger rows :func:`_appending` writes in one statement (a client's append is one
or two, a worker's commit of an event a few; more go by ``executemany``: a statement takes
at most 65,535 parameters, and each shape is a statement of its own)."""


# every shape kept: there are at most 4 x _APPEND_IN_ONE_STATEMENT, and a statement once made
# must live on (ledgerflow.store.direct keeps what it compiled for it by its identity)
@functools.cache
def _appending(
    columns: tuple[str, ...],
    count: int,
    execution: tuple[str, ...],
    wakeups: bool,
    only_if_latest: bool = False,
    notify: bool = False,
) -> sa.TextClause:
    """One PostgreSQL statement that inserts an execution row (its ``execution`` columns,
    if any; parameters ``x_<column>``), ``count`` ledger rows (their ``columns``;
    parameters ``r<n>_<column>``) and, if ``wakeups``, an outbox row for each appended
    ``event_received`` record (``wakeup_created_at``, ``wakeup_relayed_at``):
    data-modifying CTEs, one round trip. ``only_if_latest`` (with an execution): nothing is
    written unless ``x_version`` is the highest version registered for ``x_workflow``.
    ``notify`` (with ``wakeups``): the same ``NOTIFY`` as :data:`_NOTIFY` (the execution's
    id on :data:`NOTIFY_CHANNEL`) is queued, sent at commit, if an event was appended. The
    statement's first value is how many executions it created (0 or 1) when it creates one,
    else how many ledger rows. Built once per shape, as text, so SQLAlchemy's statement
    cache keeps it (it cannot cache such CTEs built from table objects)."""
    typed = [*_typed_params(events, columns, [f"r{n}_" for n in range(count)])]

    def value(name: str, column: str) -> str:
        # a DOUBLE PRECISION parameter is sent untyped: cast, so a row of NULLs selected from
        # VALUES keeps its columns' types
        if isinstance(events.c[column].type, sa.Double):
            return f"CAST(:{name} AS DOUBLE PRECISION)"
        return f":{name}"

    values = ", ".join(
        "(" + ", ".join(value(f"r{n}_{c}", c) for c in columns) + ")" for n in range(count)
    )
    parts = []
    if execution:
        typed += _typed_params(executions, execution, ["x_"])
        given = ", ".join(f":x_{c}" for c in execution)
        if only_if_latest:
            # the check and the insert in one statement: the version a concurrent
            # registration adds either is seen here or commits after this row
            source = (
                f"SELECT {given} WHERE :x_version = "
                "(SELECT max(version) FROM lf_definitions WHERE name = :x_workflow)"
            )
        else:
            source = f"VALUES ({given})"
        parts.append(
            f"created AS (INSERT INTO lf_executions ({', '.join(execution)}) {source} RETURNING id)"
        )
    if only_if_latest and execution:
        rows = f"SELECT * FROM (VALUES {values}) AS given WHERE EXISTS (SELECT FROM created)"
    else:
        rows = f"VALUES {values}"
    parts.append(
        f"appended AS (INSERT INTO lf_events ({', '.join(columns)}) {rows} "
        "RETURNING execution_id, tenant, event_id, kind)"
    )
    if wakeups:
        parts.append(
            "queued AS (INSERT INTO lf_outbox (execution_id, tenant, event_id, created_at, "
            "relayed_at) SELECT execution_id, tenant, event_id, "
            "CAST(:wakeup_created_at AS DOUBLE PRECISION), "
            "CAST(:wakeup_relayed_at AS DOUBLE PRECISION) FROM appended "
            "WHERE kind = 'event_received')"
        )
    main = f"SELECT count(*) FROM {'created' if execution else 'appended'}"
    if wakeups and notify:
        # a CTE that only reads runs when it is read: the second value reads it
        parts.append(
            f"notified AS (SELECT pg_notify('{NOTIFY_CHANNEL}', execution_id) FROM appended "
            "WHERE kind = 'event_received' LIMIT 1)"
        )
        main = f"SELECT ({main}) AS written, (SELECT count(*) FROM notified) AS notified"
    return sa.text(f"WITH {', '.join(parts)} {main}").bindparams(*typed)


# every shape kept, as for _appending: a few outcomes at most, times 24
@functools.cache
def _finishing(
    outcomes: int, projection: bool, handled: bool, release: bool, cancel: bool | None = None
) -> sa.TextClause:
    """One PostgreSQL statement that records ``outcomes`` events' outcomes (parameters
    ``o<n>_seq``, ``o<n>_status``, ``o<n>_outcome``, ``o<n>_detail``, ``processed_at``),
    saves the ``projection`` (``p_<column>``), marks the execution's wake-ups ``handled``
    (``published_at``), gives up the lease (``release``: ``owner``, ``token``) and cancels
    the armed timers of states (``cancel`` ``False``) or all of them (``True``;
    ``cancelled_at``), for ``execution_id``: data-modifying CTEs, one round trip.

    Every part of one statement sees the database as it was before the statement: a wake-up
    whose event is decided here still sees it pending, so those events are told apart by
    their seqs."""
    typed: list[sa.BindParameter[Any]] = [
        sa.bindparam("execution_id", type_=events.c.execution_id.type)
    ]
    parts = []
    seqs = [f":o{n}_seq" for n in range(outcomes)]
    for n in range(outcomes):
        typed += _typed_params(events, ("seq", "status", "outcome", "detail"), [f"o{n}_"])
        parts.append(
            f"decided{n} AS (UPDATE lf_events SET status = :o{n}_status, "
            f"outcome = :o{n}_outcome, detail = :o{n}_detail, "
            "processed_at = CAST(:processed_at AS DOUBLE PRECISION) "
            f"WHERE execution_id = :execution_id AND seq = :o{n}_seq)"
        )
    if projection:
        columns = ("state", "context", "status", "projection_seq", "decided_seq")
        typed += _typed_params(executions, columns, ["p_"])
        assigned = ", ".join(f"{c} = :p_{c}" for c in columns)
        parts.append(
            f"projected AS (UPDATE lf_executions SET {assigned}, "
            "updated_at = CAST(:p_updated_at AS DOUBLE PRECISION) WHERE id = :execution_id)"
        )
    if handled:
        decided_here = f" AND lf_events.seq NOT IN ({', '.join(seqs)})" if seqs else ""
        parts.append(
            "handled AS (UPDATE lf_outbox SET published_at = "
            "CAST(:published_at AS DOUBLE PRECISION) WHERE execution_id = :execution_id "
            "AND published_at IS NULL AND NOT EXISTS (SELECT FROM lf_events "
            "WHERE lf_events.event_id = lf_outbox.event_id AND lf_events.status = 'pending'"
            f"{decided_here}))"
        )
    if release:
        typed += _typed_params(leases, ("owner", "token"), [""])
        parts.append(
            "released AS (UPDATE lf_leases SET expires_at = 0 WHERE execution_id = :execution_id "
            "AND owner = :owner AND token = :token)"
        )
    if cancel is not None:
        parts.append(
            "cancelled AS (UPDATE lf_timers SET state = 'cancelled', cancelled_at = "
            "CAST(:cancelled_at AS DOUBLE PRECISION) WHERE execution_id = :execution_id "
            "AND state = 'armed'" + ("" if cancel else " AND kind = 'state'") + ")"
        )
    return sa.text(f"WITH {', '.join(parts)} SELECT 1").bindparams(*typed)


def _typed_params(
    table: sa.Table, columns: Sequence[str], prefixes: Sequence[str]
) -> list[sa.BindParameter[Any]]:
    """The bind parameters ``<prefix><column>`` of ``table``'s ``columns``, typed as the
    columns are (JSON serialised, and so on)."""
    return [
        sa.bindparam(f"{prefix}{column}", type_=table.c[column].type)
        for prefix in prefixes
        for column in columns
    ]


def _lease_lost(execution_id: str, owner: str, token: int) -> LeaseLostError:
    """The error of a worker whose lease on ``execution_id`` was taken over."""
    return LeaseLostError(f"execution {execution_id}: lease {token} of {owner} was taken over")


def _fenced_result_insert(held: sa.ColumnElement[bool] | None, *, shared: bool) -> Any:
    """``INSERT INTO lf_action_results … SELECT`` the bound values, from the row of the lease
    the caller holds (share-locked if ``shared``), or where ``held`` (a confined session's
    lease check) is true: nothing is inserted if the lease is not held."""
    values = [
        sa.bindparam(name, type_=action_results.c[name].type).label(name)
        for name in _RESULT_COLUMNS
    ]
    if held is None:
        source = sa.select(*values).where(
            leases.c.execution_id == sa.bindparam("execution_id"),
            leases.c.owner == sa.bindparam("owner"),
            leases.c.token == sa.bindparam("token"),
        )
        if shared:
            source = source.with_for_update(read=True)
    else:
        source = sa.select(*values).where(held)
    # the row count of an INSERT is kept only when asked for
    return (
        action_results.insert()
        .from_select(list(_RESULT_COLUMNS), source)
        .execution_options(preserve_rowcount=True)
    )


_INSERT_FENCED_RESULT = _fenced_result_insert(None, shared=False)
_INSERT_FENCED_RESULT_SHARED = _fenced_result_insert(None, shared=True)
_INSERT_FENCED_RESULT_CONFINED = _fenced_result_insert(
    sa.func.coalesce(
        sa.func.lf_check_lease(
            sa.bindparam("execution_id", type_=sa.Text),
            sa.bindparam("owner", type_=sa.Text),
            sa.bindparam("token", type_=sa.BigInteger),
            type_=sa.Boolean,
        ),
        False,
    ),
    shared=False,
)
_CHECK_LEASE_CONFINED = sa.text("SELECT lf_check_lease(:execution_id, :owner, :token)")
_MARK_HANDLED = (
    outbox.update()
    .where(
        outbox.c.execution_id == sa.bindparam("key_execution_id"),
        outbox.c.published_at.is_(None),
        ~sa.exists().where(events.c.event_id == outbox.c.event_id, events.c.status == "pending"),
    )
    .values(published_at=sa.bindparam("published_at"))
)
_SAVE_PROJECTION = (
    executions.update()
    .where(executions.c.id == sa.bindparam("key_id"))
    .values(
        state=sa.bindparam("state"),
        context=sa.bindparam("context", type_=executions.c.context.type),
        status=sa.bindparam("status"),
        projection_seq=sa.bindparam("projection_seq"),
        decided_seq=sa.bindparam("decided_seq"),
        updated_at=sa.bindparam("updated_at"),
    )
)
_LATEST_VERSION = sa.select(sa.func.max(definitions.c.version)).where(
    definitions.c.name == sa.bindparam("name")
)
_ACTION_RESULT = sa.select(action_results.c.result).where(
    action_results.c.key == sa.bindparam("key")
)
# PostgreSQL: one statement for any number of events (an expanding IN is compiled per call)
# by tenant first: the index's leading column (without it the index is scanned whole, in time
# that grows with every result ever recorded)
_RESULTS_OF_EVENTS = sa.select(action_results.c.key, action_results.c.result).where(
    action_results.c.tenant == sa.bindparam("tenant"),
    action_results.c.execution_id == sa.bindparam("execution_id"),
    action_results.c.event_id
    == sa.any_(sa.bindparam("event_ids", type_=postgresql.ARRAY(sa.String))),
)
_DUE_TIMERS = (
    sa.select(timers.c.id, timers.c.execution_id, timers.c.tenant)
    .where(timers.c.state == "armed", timers.c.due_at <= sa.bindparam("now"))
    .order_by(timers.c.due_at, timers.c.id)
    .limit(sa.bindparam("limit", type_=sa.Integer))
)


def _unleased(execution_id: sa.ColumnElement[str], now: Any) -> sa.ColumnElement[bool]:
    """No live lease on ``execution_id`` at ``now``: one probe of the leases' primary key per
    candidate row. (``NOT EXISTS`` is planned as an anti-join, which PostgreSQL ran as a scan
    of every lease for every candidate: the leases table keeps a row per execution ever
    worked on.)"""
    expires = (
        sa.select(leases.c.expires_at)
        .where(leases.c.execution_id == execution_id)
        .scalar_subquery()
    )
    unleased: sa.ColumnElement[bool] = sa.func.coalesce(expires, 0.0) <= now
    return unleased


_PENDING_EXECUTIONS = (
    sa.select(events.c.execution_id, events.c.tenant)
    .where(
        events.c.status == "pending",
        _unleased(events.c.execution_id, sa.bindparam("now", type_=sa.Double)),
    )
    .group_by(events.c.execution_id, events.c.tenant)
    .limit(sa.bindparam("limit", type_=sa.Integer))
)


def _claims() -> tuple[dict[str, Any], dict[str, Any]]:
    """The statements of :meth:`SQLStore.claim`, by dialect: the oldest unhandled wake-ups
    of executions nobody holds, and (fairly) each tenant's oldest such wake-up, the tenant
    holding the fewest live leases first, under ``tenant_limit``. On PostgreSQL the rows are
    locked ``FOR UPDATE SKIP LOCKED``."""
    now = sa.bindparam("now", type_=sa.Double)
    free = sa.and_(outbox.c.published_at.is_(None), _unleased(outbox.c.execution_id, now))
    oldest = sa.select(outbox.c.execution_id, outbox.c.tenant).where(free)
    busy = (
        sa.select(sa.func.count())
        .select_from(leases)
        .where(leases.c.tenant == outbox.c.tenant, leases.c.expires_at > now)
        .scalar_subquery()
    )
    # each tenant's oldest wake-up of an execution nobody holds: one turn per tenant
    firsts = (
        sa.select(sa.func.min(outbox.c.id).label("id"))
        .where(free)
        .group_by(outbox.c.tenant)
        .subquery("firsts")
    )
    fairly = (
        oldest.join(firsts, firsts.c.id == outbox.c.id)
        .where(busy < sa.bindparam("tenant_limit", type_=sa.Integer))
        .order_by(busy, outbox.c.id)
        .limit(32)
    )
    oldest = oldest.order_by(outbox.c.id).limit(32)
    return (
        {"sqlite": oldest, "postgresql": oldest.with_for_update(skip_locked=True, of=outbox)},
        {"sqlite": fairly, "postgresql": fairly.with_for_update(skip_locked=True, of=outbox)},
    )


_CLAIM, _CLAIM_FAIRLY = _claims()


@contextlib.contextmanager
def tenant_scope(tenant: str) -> Iterator[None]:
    """Within the block, every store transaction of this thread (or task) that names no
    tenant of its own acts for ``tenant``: on PostgreSQL, row-level security shows and lets it
    change only that tenant's rows (:data:`ALL_TENANTS` lifts the wall, for work that crosses
    tenants). Scopes nest; the innermost wins."""
    token = _TENANT_SCOPE.set(tenant)
    try:
        yield
    finally:
        _TENANT_SCOPE.reset(token)


def tenant_wall(conn: Connection, table: sa.Table | str, *, column: str = "tenant") -> bool:
    """Put ledgerflow's tenant wall on an application table (a :class:`sqlalchemy.Table`, or
    a name, ``schema.name`` for one outside the current schema): on PostgreSQL, enable (and force,
    for its owner too) row-level security with a policy that shows and lets a transaction
    change only the rows whose ``column`` is the tenant it acts for (:func:`tenant_scope`, and
    every transaction of a step). Database actions then cannot read or write another
    tenant's rows even when a query forgets to filter, and when they run as a confined role
    (:func:`confine_role`) not even by claiming to act for every tenant. Returns ``True`` if
    the policy was created or brought up to date (a wall put up before schema revision 0006
    let every session lift it), ``False`` if it was there already or the database is not
    PostgreSQL (SQLite has no row-level security: there the queries' own scoping is the only
    wall).

    Run it when the table is created (again after ``ledgerflow db upgrade``: it is
    idempotent), by a role that owns the table, in the database that holds the ledger.
    """
    if conn.dialect.name != "postgresql":
        return False
    if isinstance(table, str):
        schema, _, name = table.rpartition(".")
    else:
        schema, name = table.schema or "", table.name
    present = conn.execute(
        sa.text(
            "SELECT coalesce(qual, '') LIKE '%lf_wall_tenant%' AS current "
            "FROM pg_policies WHERE tablename = :table "
            "AND policyname = 'ledgerflow_tenant_wall' "
            "AND schemaname = coalesce(nullif(:schema, ''), current_schema())"
        ),
        {"table": name, "schema": schema},
    ).first()
    quote = conn.dialect.identifier_preparer.quote
    target = f"{quote(schema)}.{quote(name)}" if schema else quote(name)
    rule = _wall_rule(quote(column), _wall_schema(conn))
    if present is not None:
        if present.current:
            return False
        # a wall put up before schema revision 0006: a confined role could lift it
        conn.exec_driver_sql(
            f"ALTER POLICY ledgerflow_tenant_wall ON {target} USING ({rule}) WITH CHECK ({rule})"
        )
        return True
    conn.exec_driver_sql(f"ALTER TABLE {target} ENABLE ROW LEVEL SECURITY")
    conn.exec_driver_sql(f"ALTER TABLE {target} FORCE ROW LEVEL SECURITY")
    conn.exec_driver_sql(
        f"CREATE POLICY ledgerflow_tenant_wall ON {target} USING ({rule}) WITH CHECK ({rule})"
    )
    return True


def _wall_schema(conn: Connection) -> str:
    """The schema of the ledger's wall function (``lf_wall_tenant``) as this connection's
    search path finds it."""
    found = conn.execute(
        sa.text(
            "SELECT n.nspname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE p.oid = to_regprocedure('lf_wall_tenant()')"
        )
    ).scalar()
    if found is None:
        raise SchemaError(
            "no ledgerflow schema at revision 0006 or later in this database's search path: "
            "run `ledgerflow db upgrade` first"
        )
    return str(found)


def _wall_rule(column: str, schema: str) -> str:
    """The tenant wall's policy on ``column`` (quoted): the rows of the tenant that
    ``lf_wall_tenant()`` vouches for, every row for ``*`` (which it never vouches for in a
    session of a confined role); the function is called once per query (an InitPlan)."""
    wall = f'(SELECT "{schema}".lf_wall_tenant())'
    return f"{column} = {wall} OR {wall} = '*'"


# what a confined role may do to the ledger's tables, all of them behind the wall: what the
# step transactions of database actions do (record a result, append an event, schedule a
# timer, lock the execution), never delete
_CONFINED_GRANTS = {
    # UPDATE of one column, for the row lock appending an event takes; never the projection
    "lf_executions": "SELECT, UPDATE (updated_at)",
    "lf_events": "SELECT, INSERT",
    # not the id: the sequence gives it (ids taken ahead would block every tenant's appends)
    "lf_outbox": "SELECT, INSERT (execution_id, tenant, event_id, created_at, published_at, "
    "relayed_at)",
    "lf_action_results": "SELECT, INSERT",
    "lf_timers": "SELECT, INSERT",
}


def _grant_sequences(conn: Connection, table: str, who: str) -> None:
    """Let ``who`` draw from the sequences of ``table``'s serial and identity columns."""
    quote = conn.dialect.identifier_preparer.quote
    owned = conn.execute(
        sa.text(
            "SELECT n.nspname, s.relname FROM pg_depend d "
            "JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' "
            "JOIN pg_namespace n ON n.oid = s.relnamespace "
            "WHERE d.classid = 'pg_class'::regclass AND d.refobjid = CAST(:table AS regclass)"
        ),
        {"table": table},
    ).all()
    for schema, name in owned:
        conn.exec_driver_sql(f"GRANT USAGE ON SEQUENCE {quote(schema)}.{quote(name)} TO {who}")


def confine_role(conn: Connection, role: str, *, tables: Sequence[sa.Table | str] = ()) -> None:
    """Make the PostgreSQL login ``role`` fit to run database actions (the store's
    ``action_url`` logs in as it) inside their tenant. For its sessions the tenant wall
    honours only the tenant the engine sealed for the transaction: SQL in an action can change
    ``ledgerflow.tenant`` (to another tenant's name, or ``*``) but not forge the seal, and then
    sees no row at all. It gets only what a step's transaction needs of the ledger (to read and
    add its own tenant's rows, and lock its execution; never to delete, nor to read leases,
    workers or brokers). ``tables`` are application tables the actions use: the role may read,
    insert, update and delete their rows, which their tenant wall (:func:`tenant_wall`, required
    and checked) limits to its tenant.

    Run it as the owner of the ledger's tables; the role must exist (``CREATE ROLE name
    LOGIN``), and be neither a superuser, nor exempt from row-level security, nor able to
    create roles, nor a member of another role, nor the owner of a table. Calling it again is
    harmless (and grants newly listed tables).
    """
    if conn.dialect.name != "postgresql":
        raise InvalidInputError("confined roles need PostgreSQL (SQLite has no roles)")
    problem = _unfit(conn, role)
    if problem is not None:
        if problem == "missing":
            raise InvalidInputError(f"no PostgreSQL role {role!r}: create it first (CREATE ROLE)")
        raise ConfinementError(f"role {role!r} cannot be confined: {problem}")
    quote = conn.dialect.identifier_preparer.quote
    targets = []
    for table in tables:
        if isinstance(table, str):
            owner, _, name = table.rpartition(".")
        else:
            owner, name = table.schema or "", table.name
        walled = conn.execute(
            sa.text(
                "SELECT c.relrowsecurity AND c.relforcerowsecurity AND EXISTS ("
                "SELECT 1 FROM pg_policies p WHERE p.schemaname = n.nspname "
                "AND p.tablename = c.relname AND p.policyname = 'ledgerflow_tenant_wall' "
                "AND coalesce(p.qual, '') LIKE '%lf_wall_tenant%') "
                "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relname = :name AND n.nspname = coalesce(nullif(:schema, ''), "
                "current_schema())"
            ),
            {"name": name, "schema": owner},
        ).scalar()
        if walled is None:
            raise InvalidInputError(f"no table {table if isinstance(table, str) else name!r}")
        if not walled:
            raise ConfinementError(
                f"table {name!r} has no up-to-date tenant wall: put one on it with "
                "ledgerflow.store.tenant_wall first (a table without one is open to every tenant)"
            )
        targets.append((owner, f"{quote(owner)}.{quote(name)}" if owner else quote(name)))
    who = quote(role)
    schema = conn.execute(sa.text("SELECT current_schema()")).scalar_one()
    conn.exec_driver_sql(f"GRANT USAGE ON SCHEMA {quote(schema)} TO {who}")
    for ledger_table, rights in _CONFINED_GRANTS.items():
        conn.exec_driver_sql(f"GRANT {rights} ON {ledger_table} TO {who}")
        _grant_sequences(conn, ledger_table, who)
    conn.exec_driver_sql(f"GRANT EXECUTE ON FUNCTION lf_check_lease(text, text, bigint) TO {who}")
    for owner, target in targets:
        if owner:
            conn.exec_driver_sql(f"GRANT USAGE ON SCHEMA {quote(owner)} TO {who}")
        conn.exec_driver_sql(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {target} TO {who}")
        _grant_sequences(conn, target, who)
    conn.execute(
        postgresql.insert(confined_roles)
        .values(role=role, confined_at=time.time())
        .on_conflict_do_nothing(index_elements=["role"])
    )


def _unfit(conn: Connection, role: str) -> str | None:
    """Why ``role`` could get past the wall, or reach other tenants' work (``"missing"`` if
    there is no such role), or ``None``."""
    row = conn.execute(
        sa.text(
            "SELECT r.rolsuper, r.rolbypassrls, r.rolcreaterole, r.rolreplication, "
            "EXISTS (SELECT 1 FROM pg_auth_members m WHERE m.member = r.oid) AS member, "
            "EXISTS (SELECT 1 FROM pg_class c WHERE c.relowner = r.oid) "
            "OR EXISTS (SELECT 1 FROM pg_namespace n WHERE n.nspowner = r.oid) "
            "OR EXISTS (SELECT 1 FROM pg_database d WHERE d.datname = current_database() "
            "AND d.datdba = r.oid) AS owner, "
            "has_database_privilege(r.oid, current_database(), 'CREATE') "
            "OR EXISTS (SELECT 1 FROM pg_namespace n WHERE n.nspname NOT LIKE 'pg\\_%' "
            "AND n.nspname <> 'information_schema' "
            "AND has_schema_privilege(r.oid, n.oid, 'CREATE')) AS creates, "
            "EXISTS (SELECT 1 FROM pg_db_role_setting s WHERE s.setrole = r.oid AND s.setdatabase "
            "IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))) "
            "AS settings "
            "FROM pg_roles r WHERE r.rolname = :role"
        ),
        {"role": role},
    ).first()
    if row is None:
        return "missing"
    if row.rolsuper or row.rolbypassrls:
        return "it is a superuser or bypasses row-level security"
    if row.rolcreaterole:
        return "it may create roles (and so grant itself others' rights)"
    if row.rolreplication:
        return "it may replicate (logical decoding reads every tenant's changes)"
    if row.member:
        return "it is a member of another role, whose rights SET ROLE would give it"
    if row.owner:
        return "it owns the database, a schema or a table (an owner can lift the wall)"
    if row.creates:
        return (
            "it may create objects in the database or one of its schemas (a function or "
            "operator there could run as another role); REVOKE CREATE from it, and from PUBLIC"
        )
    if row.settings:
        return (
            "it carries settings of its own (ALTER ROLE … SET), which every new session "
            f"takes on: run ALTER ROLE {role} RESET ALL (and ALTER ROLE {role} IN DATABASE … "
            "RESET ALL), as an administrator"
        )
    reach = [
        name
        for name, allowed in conn.execute(
            sa.text(
                "SELECT f.name, CASE WHEN f.kind = 'f' "
                "THEN has_function_privilege(:role, to_regprocedure(f.name), 'EXECUTE') "
                "ELSE has_table_privilege(:role, to_regclass(f.name), 'SELECT') END "
                "FROM (VALUES " + ", ".join(f"('{n}', '{k}')" for n, k in _SHARED) + ") "
                "AS f(name, kind)"
            ),
            {"role": role},
        )
        if allowed
    ]
    if reach:
        return (
            f"it may use {', '.join(reach)}, which reach other tenants' sessions or data: "
            "a superuser must first run, in this database: "
            + "; ".join(confinement_prerequisites())
        )
    return None


def confinement_prerequisites() -> list[str]:
    """The statements a superuser runs, once, in the ledger's database before a role can be
    confined (:func:`confine_role` refuses until then): they take from every role what would
    let one tenant's action reach another's sessions (cancel, end or watch them: sessions of
    the confined role serve every tenant) or share data outside the wall (large objects).
    Grant them back to the roles that need them (a monitoring role, ``pg_stat_activity``)."""
    return [
        f"REVOKE {'EXECUTE ON FUNCTION' if kind == 'f' else 'SELECT ON'} {name} FROM PUBLIC"
        for name, kind in _SHARED
    ]


# what every role may use by default and a confined one must not: other sessions of its role
# (other tenants' actions) to cancel, end or watch, and large objects, shared by every tenant
_SHARED = (
    ("pg_catalog.pg_cancel_backend(integer)", "f"),
    ("pg_catalog.pg_terminate_backend(integer, bigint)", "f"),
    ("pg_catalog.pg_stat_activity", "t"),
    ("pg_catalog.pg_stat_get_activity(integer)", "f"),
    ("pg_catalog.lo_creat(integer)", "f"),
    ("pg_catalog.lo_create(oid)", "f"),
    ("pg_catalog.lo_from_bytea(oid, bytea)", "f"),
    ("pg_catalog.lo_open(oid, integer)", "f"),
    ("pg_catalog.lo_get(oid)", "f"),
    ("pg_catalog.lo_get(oid, bigint, integer)", "f"),
    ("pg_catalog.lo_put(oid, bigint, bytea)", "f"),
)


def current_tenant_scope() -> str | None:
    """The tenant of the innermost :func:`tenant_scope` around the caller, if any."""
    return _TENANT_SCOPE.get()


"""The PostgreSQL channel an enqueue notifies and idle workers listen on."""

_MIGRATIONS = Path(__file__).with_name("migrations")
_HEAD = "0006"


def normalise_url(url: str) -> str:
    """``url`` with the driver ledgerflow uses: ``postgresql://`` means psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _checkout(pool: Engine) -> Connection:
    """A connection of ``pool``; :class:`StoreUnavailableError` when the server is not
    reachable."""
    try:
        return pool.connect()
    except sa.exc.OperationalError as exc:
        raise StoreUnavailableError(
            f"cannot reach the database at {pool.url.render_as_string()}: {first_line(exc)}"
        ) from exc


def _lost(pool: Engine, exc: BaseException) -> StoreUnavailableError:
    """The error for a connection the server dropped mid-transaction (restarted, or the
    connection was cut): the transaction did not commit (or, cut during its commit, may have:
    an append retried with its client key is harmless); the pool replaces the connection."""
    return StoreUnavailableError(
        f"lost the connection to the database at {pool.url.render_as_string()}: {first_line(exc)}"
    )


@attrs.frozen(kw_only=True)
class StoredRecord:
    """A ledger record as stored: the record plus its event id, status and times."""

    record: Record
    event_id: str
    status: str | None
    outcome: str | None
    detail: str | None
    client_key: str | None
    created_at: float
    processed_at: float | None


def _sqlite_engine(url: str) -> Engine:
    memory = url in ("sqlite://", "sqlite:///:memory:") or "mode=memory" in url
    kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 30}}
    if memory:
        kwargs["poolclass"] = StaticPool
    engine = sa.create_engine(url, **kwargs)

    @sa_event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # take transaction control from the driver: SQLAlchemy's begin hook below says BEGIN
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if not memory:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @sa_event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


class SQLStore:
    """The ledger in a SQL database, reached through SQLAlchemy.

    ``url`` is a SQLAlchemy URL: ``sqlite:///path.db`` (the default), ``sqlite://`` (in memory,
    for tests) or ``postgresql://user@host/db``. ``clock`` gives the time, in seconds since the
    epoch, for every timestamp and lease the store writes.

    ``action_url`` (PostgreSQL only) is the same database reached as a confined role
    (:func:`confine_role`): the transactions in which database actions run log in as it, so
    an action's SQL cannot lift the tenant wall. Without it they run as ``url``'s role, behind
    the same wall, which SQL that sets ``ledgerflow.tenant`` itself could lift.
    """

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float] = time.time,
        snapshot_every: int = 100,
        action_url: str | None = None,
    ) -> None:
        self.url = normalise_url(url)
        self.clock = clock
        self.snapshot_every = snapshot_every
        self.action_engine: Engine | None = None
        """The pool of the confined role's connections, if ``action_url`` was given."""
        self._wall_key: str | None = None
        try:
            if self.url.startswith("sqlite"):
                self.engine = _sqlite_engine(self.url)
            else:
                # no ping at checkout: a connection dropped by a restart is replaced when the
                # first statement of a transaction finds it dead (see _transaction)
                self.engine = sa.create_engine(self.url, pool_size=10)
        except (sa.exc.ArgumentError, ImportError) as exc:
            raise StoreUnavailableError(f"cannot use database URL {url!r}: {exc}") from exc
        self.dialect = self.engine.dialect.name
        self.in_memory = self.dialect == "sqlite" and (
            self.url in ("sqlite://", "sqlite:///:memory:") or "mode=memory" in self.url
        )
        if action_url:
            self.action_engine = self._action_engine(action_url)

    def _action_engine(self, action_url: str) -> Engine:
        """The pool for ``action_url``, which must reach this store's own database."""
        if self.dialect != "postgresql":
            raise InvalidInputError("a role for database actions (action_url) needs PostgreSQL")
        try:
            target = sa.engine.make_url(normalise_url(action_url))
        except sa.exc.ArgumentError as exc:
            raise InvalidInputError(f"not a database URL: {action_url!r}") from exc
        mine = self.engine.url
        if (target.host, target.port or 5432, target.database) != (
            mine.host,
            mine.port or 5432,
            mine.database,
        ):
            raise InvalidInputError(
                "the role for database actions must reach the ledger's own database "
                f"({mine.render_as_string()}), not {target.render_as_string()}"
            )
        # psycopg prepares no statement on these connections: a prepared statement is session
        # state an action could replace, and DISCARD ALL drops them
        # the reset below is the whole reset on return (its rollback included), done once
        pool = sa.create_engine(
            target,
            pool_size=10,
            pool_reset_on_return=None,
            connect_args={"prepare_threshold": None},
        )

        @sa_event.listens_for(pool, "reset")
        def _reset(dbapi_connection: Any, _record: Any, reset: Any) -> None:
            # an action's session leaves nothing to the next transaction, another tenant's
            # perhaps: no temporary table, setting, listener, advisory lock or prepared
            # statement outlives it
            dbapi_connection.rollback()
            if reset.terminate_only:
                return
            dbapi_connection.autocommit = True
            try:
                dbapi_connection.execute("DISCARD ALL")
            finally:
                dbapi_connection.autocommit = False

        return pool

    def __repr__(self) -> str:
        return f"SQLStore({self.engine.url.render_as_string(hide_password=True)!r})"

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
        if self.action_engine is not None:
            self.action_engine.dispose()

    # ----------------------------------------------------------------------------------------
    # Transactions
    # ----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def write(
        self, isolation: str | None = None, *, tenant: str | None = None
    ) -> Iterator[Connection]:
        """A write transaction, committed when the block ends and rolled back on an error.

        On SQLite it takes the write lock at once (``BEGIN IMMEDIATE``). ``isolation`` sets a
        PostgreSQL isolation level for this transaction only. ``tenant`` (by default the one
        of the enclosing :func:`tenant_scope`) is the only tenant whose rows the transaction
        can see or write on PostgreSQL, where row-level security enforces it; a transaction
        with no tenant at all sees no tenant's rows there.
        """
        if self.dialect == "sqlite":
            options: dict[str, Any] = {"sqlite_begin": "IMMEDIATE"}
        else:
            options = {} if isolation is None else {"isolation_level": isolation}
        with self._transaction(self.engine, tenant, options) as conn:
            yield conn

    @contextlib.contextmanager
    def action_write(self, isolation: str, *, tenant: str) -> Iterator[Connection]:
        """The write transaction a database action runs in (see :meth:`write`): as the
        confined role of ``action_url`` when there is one, which is checked to be confined
        the first time (:class:`ConfinementError` otherwise)."""
        if self.action_engine is None:
            with self.write(isolation, tenant=tenant) as conn:
                yield conn
            return
        options = {"isolation_level": isolation}
        with self._transaction(self.action_engine, tenant, options, sealed=True) as conn:
            yield conn

    def _check_confined(self, conn: Connection) -> None:
        """Refuse to run actions as a role the wall would not hold (checked on each new
        connection of the confined pool, before its first transaction)."""
        role = conn.execute(sa.text("SELECT session_user")).scalar_one()
        listed = conn.execute(
            sa.text("SELECT 1 FROM lf_confined_roles WHERE role = :role"), {"role": role}
        ).first()
        problem = _unfit(conn, role)
        if listed is None or problem is not None:
            raise ConfinementError(
                f"database actions are to run as role {role!r}, which is not confined: "
                + (problem or f"run `ledgerflow db confine {role}` as the ledger's owner")
            )

    def _seal(self, conn: Connection, tenant: str) -> str:
        """The seal of ``tenant`` for ``conn``'s backend: what makes a confined session's
        wall honour the tenant (see schema revision 0006)."""
        if self._wall_key is None:
            with self.write() as own:
                # made here if it is missing (emptied with the other tables): the ledger's
                # owner, whom this store connects as, alone may read or write it
                own.execute(
                    postgresql.insert(wall_secret)
                    .values(id=1, secret=secrets.token_hex(32))
                    .on_conflict_do_nothing(index_elements=["id"])
                )
                key = own.execute(sa.select(wall_secret.c.secret)).scalar_one()
            self._wall_key = str(key)
        pid = conn.connection.driver_connection.info.backend_pid  # type: ignore[union-attr]
        text = f"{self._wall_key}:{tenant}:{pid}:{self._wall_key}"
        return hashlib.sha256(text.encode()).hexdigest()

    @contextlib.contextmanager
    def read(self, *, tenant: str | None = None) -> Iterator[Connection]:
        """A read transaction: every read in it sees one snapshot of the database, and on
        PostgreSQL only the rows of ``tenant`` (as for :meth:`write`)."""
        with self._transaction(self.engine, tenant, {}) as conn:
            yield conn

    @contextlib.contextmanager
    def _transaction(
        self, pool: Engine, tenant: str | None, options: Mapping[str, Any], *, sealed: bool = False
    ) -> Iterator[Connection]:
        """A transaction on a connection of ``pool`` whose first statement (on PostgreSQL, the
        tenant setting) went through. A pooled connection that the server dropped since its
        last use (after a restart) fails that statement, with nothing of the caller's sent
        yet: it is replaced once, transparently, so no round trip is spent testing every
        connection taken from the pool. A connection lost later raises
        :class:`StoreUnavailableError` (see :meth:`_connect`). ``sealed``: a confined
        role's transaction, whose tenant carries its seal (and whose connection is checked to
        be confined when it is new)."""
        level = options.get("isolation_level")
        named: Any = None
        if (
            level is not None
            and level == getattr(pool.dialect, "default_isolation_level", None)
            and pool.dialect.driver == "psycopg"
        ):
            # the server's default level: asked of psycopg directly, which names it in BEGIN
            # (so no level a session set for itself applies), instead of through SQLAlchemy,
            # which sets it on the connection and sets it back for every transaction
            import psycopg

            named = psycopg.IsolationLevel[level.replace(" ", "_")]
            options = {k: v for k, v in options.items() if k != "isolation_level"}
        for attempt in range(2):
            conn = _checkout(pool)
            try:
                if options:
                    conn = conn.execution_options(**options)
                if named is not None:
                    driver = conn.connection.driver_connection
                    if driver.isolation_level != named:  # type: ignore[union-attr]
                        driver.isolation_level = named  # type: ignore[union-attr]
                transaction = conn.begin()
                if (
                    sealed
                    or self.dialect != "postgresql"
                    or not direct.begin_with_tenant(conn, self._tenant_for(tenant))
                ):
                    self._set_tenant(conn, tenant, sealed=sealed)
                if sealed and not conn.info.get("ledgerflow_confined"):
                    self._check_confined(conn)
                    conn.info["ledgerflow_confined"] = True
            except sa.exc.DBAPIError as exc:
                conn.close()
                if not exc.connection_invalidated:
                    if sealed:
                        # the seal or the check of a confined session failed: the engine's
                        # trouble, never the step's
                        raise StoreUnavailableError(
                            f"could not begin a database action's transaction: {first_line(exc)}"
                        ) from exc
                    raise
                if attempt == 0:
                    continue  # the pool was invalidated with it: the next one is new
                raise _lost(pool, exc) from exc
            except BaseException:
                conn.close()
                raise
            break
        try:
            with conn, transaction:
                yield conn
        except sa.exc.DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            raise _lost(pool, exc) from exc

    @staticmethod
    def _tenant_for(tenant: str | None) -> str:
        """The tenant a transaction acts for: ``tenant``, else the enclosing scope's, else
        none (``""``)."""
        return (tenant if tenant is not None else _TENANT_SCOPE.get()) or ""

    def _set_tenant(self, conn: Connection, tenant: str | None, *, sealed: bool = False) -> None:
        """Tell PostgreSQL's row-level security policies whose rows this transaction may
        touch: ``tenant``, else the enclosing scope's, else none; ``sealed``, with the seal a
        confined session needs."""
        if self.dialect != "postgresql":
            return
        scope = self._tenant_for(tenant)
        if sealed:
            seal = self._seal(conn, scope)
            # through SQLAlchemy, its cursor closed at once: no result holding the seal is
            # left on the connection the action's code is handed
            conn.execute(_SET_SEALED_TENANT, {"tenant": scope, "seal": seal}).close()
        else:
            direct.run(conn, _SET_TENANT, {"tenant": scope})

    @contextlib.contextmanager
    def _connect(self, pool: Engine | None = None) -> Iterator[Connection]:
        pool = pool or self.engine
        conn = _checkout(pool)
        try:
            with conn:
                yield conn
        except sa.exc.DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            raise _lost(pool, exc) from exc

    # ----------------------------------------------------------------------------------------
    # Schema
    # ----------------------------------------------------------------------------------------

    def upgrade(self) -> str:
        """Bring the schema to the newest revision (creating it on an empty database); returns
        the revision now in place."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(_MIGRATIONS))
        with self._connect() as conn:
            if self.dialect == "sqlite":
                conn = conn.execution_options(sqlite_begin="IMMEDIATE")
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
            conn.commit()
        return _HEAD

    def revision(self) -> str | None:
        """The schema revision in place, or ``None`` on a database ledgerflow never set up."""
        with self.read() as conn:
            if not sa.inspect(conn).has_table("lf_schema_version"):
                return None
            return conn.execute(sa.text("SELECT version_num FROM lf_schema_version")).scalar()

    def check_schema(self) -> None:
        """Raise :class:`SchemaError` unless the schema is at the revision this code needs."""
        current = self.revision()
        if current != _HEAD:
            found = "no ledgerflow schema" if current is None else f"schema revision {current}"
            raise SchemaError(
                f"the database has {found}; this ledgerflow needs revision {_HEAD}: "
                "run `ledgerflow db upgrade`"
            )

    # ----------------------------------------------------------------------------------------
    # Definitions
    # ----------------------------------------------------------------------------------------

    def definition_hash(self, conn: Connection, name: str, version: int) -> str | None:
        """The hash of the definition stored as ``name`` ``version``, if any."""
        return conn.execute(
            sa.select(definitions.c.hash).where(
                definitions.c.name == name, definitions.c.version == version
            )
        ).scalar()

    def insert_definition(
        self, conn: Connection, name: str, version: int, body: dict[str, Any], digest: str
    ) -> None:
        """Store a definition (the caller checked there is none under the same version)."""
        conn.execute(
            definitions.insert().values(
                name=name, version=version, body=body, hash=digest, registered_at=self.clock()
            )
        )

    def definition_body(
        self, name: str, version: int, *, conn: Connection | None = None
    ) -> dict[str, Any] | None:
        """The stored body of ``name`` ``version``, if any (read in ``conn``'s transaction, or
        in one of its own)."""
        if conn is None:
            with self.read() as own:
                return self.definition_body(name, version, conn=own)
        body: dict[str, Any] | None = conn.execute(
            sa.select(definitions.c.body).where(
                definitions.c.name == name, definitions.c.version == version
            )
        ).scalar()
        return body

    def latest_version(self, name: str, conn: Connection | None = None) -> int | None:
        """The highest version registered for ``name``, if any (read in ``conn``'s
        transaction when one is given)."""
        if conn is None:
            with self.read() as own:
                return self.latest_version(name, own)
        latest: int | None = direct.run(conn, _LATEST_VERSION, {"name": name}).scalar()
        return latest

    def list_definitions(self) -> list[tuple[str, int, str, float]]:
        """Every registered ``(name, version, hash, registered_at)``, by name then version."""
        with self.read() as conn:
            rows = conn.execute(
                sa.select(
                    definitions.c.name,
                    definitions.c.version,
                    definitions.c.hash,
                    definitions.c.registered_at,
                ).order_by(definitions.c.name, definitions.c.version)
            )
            return [(r.name, r.version, r.hash, r.registered_at) for r in rows]

    # ----------------------------------------------------------------------------------------
    # Executions and the ledger
    # ----------------------------------------------------------------------------------------

    def insert_execution(
        self,
        conn: Connection,
        execution_id: str,
        tenant: str,
        state: State,
        started: Record,
        *,
        then: Sequence[Record] = (),
        client_key: str | None = None,
        published: bool = False,
        only_if_latest: bool = False,
    ) -> list[str] | None:
        """Create an execution: its projection and the first record of its ledger, followed
        by the records ``then`` (appended as :meth:`insert_records` appends them, with
        ``client_key`` and ``published``); returns the event ids of ``then``. On PostgreSQL
        it is one statement.

        With ``only_if_latest``, the execution is created only if its version
        (``state.version``) is the highest registered for its workflow when it is written,
        which the same statement checks: ``None`` is returned, with nothing written, if it is
        not."""
        if only_if_latest and not self._appends_in_one_statement(1 + len(then)):
            if self.latest_version(state.workflow, conn) != state.version:
                return None
            only_if_latest = False  # checked in this transaction, as the statement would
        now = self.clock()
        execution = {
            "id": execution_id,
            "tenant": tenant,
            "workflow": state.workflow,
            "version": state.version,
            "state": state.name,
            "context": dict(state.context),
            "status": state.status.value,
            "projection_seq": state.seq,
            "decided_seq": state.decided_seq,
            "created_at": now,
            "updated_at": now,
        }
        ids = self._insert_records(
            conn,
            execution_id,
            tenant,
            [started, *then],
            client_key=client_key,
            published=published,
            execution=execution,
            only_if_latest=only_if_latest,
        )
        return None if ids is None else ids[1:]

    def execution_row(self, conn: Connection, execution_id: str, tenant: str) -> Any:
        """The execution's row, or ``None`` if it does not exist for ``tenant``."""
        return direct.run(conn, _EXECUTION_ROW, {"id": execution_id, "tenant": tenant}).first()

    def lock_execution_row(self, conn: Connection, execution_id: str, tenant: str) -> Any:
        """The execution's row, or ``None`` if it does not exist for ``tenant``, locked until
        the transaction ends (see :meth:`lock_execution`)."""
        query = _LOCKED_EXECUTION_ROW if self.dialect == "postgresql" else _EXECUTION_ROW
        return direct.run(conn, query, {"id": execution_id, "tenant": tenant}).first()

    def lock_execution(self, conn: Connection, execution_id: str) -> None:
        """On PostgreSQL, lock the execution's row until the transaction ends, so that writers
        appending to one execution take turns instead of colliding on a seq and retrying (the
        unique ``(execution_id, seq)`` stays the guarantee; this only spares the retries). On
        SQLite a write transaction already holds the whole database."""
        if self.dialect == "postgresql":
            direct.run(conn, _LOCK_EXECUTION, {"id": execution_id})

    def last_seq(self, conn: Connection, execution_id: str) -> int:
        """The highest seq in the execution's ledger (0 for none). Appenders call it after
        :meth:`lock_execution`."""
        return int(direct.run(conn, _LAST_SEQ, {"execution_id": execution_id}).scalar_one())

    def event_by_key(self, conn: Connection, execution_id: str, client_key: str) -> str | None:
        """The id of the event appended with ``client_key``, if any."""
        params = {"execution_id": execution_id, "client_key": client_key}
        event_id: str | None = direct.run(conn, _EVENT_BY_KEY, params).scalar()
        return event_id

    def insert_records(
        self,
        conn: Connection,
        execution_id: str,
        tenant: str,
        records: Sequence[Record],
        *,
        client_key: str | None = None,
        published: bool = False,
    ) -> list[str]:
        """Append ``records`` at their seqs, in one round trip; an ``event_received`` record is
        marked pending and gets an outbox row. Returns the new event ids. ``published`` says
        the caller publishes the wake-ups itself once this commits (a broker transport's fast
        path): the outbox relay then leaves them alone unless they are still unhandled well
        after (see :meth:`relay_claim`), instead of sending every young one a second time,
        and, on PostgreSQL, no ``NOTIFY`` is sent for them (it wakes the database transport's
        workers).

        A seq already taken raises :class:`sqlalchemy.exc.IntegrityError`: the optimistic
        concurrency check on ``(execution_id, seq)``.
        """
        ids = self._insert_records(
            conn, execution_id, tenant, records, client_key=client_key, published=published
        )
        assert ids is not None  # only a guarded creation writes nothing
        return ids

    def _insert_records(
        self,
        conn: Connection,
        execution_id: str,
        tenant: str,
        records: Sequence[Record],
        *,
        client_key: str | None,
        published: bool,
        execution: dict[str, Any] | None = None,
        only_if_latest: bool = False,
    ) -> list[str] | None:
        """:meth:`insert_records`, after inserting the ``execution`` row if given: on
        PostgreSQL, the execution, the records and their wake-ups in one statement, which
        with ``only_if_latest`` (given only when it is one statement) writes nothing and
        gives ``None`` unless the execution's version is its workflow's latest."""
        now = self.clock()
        rows: list[dict[str, Any]] = []
        wakeups: list[dict[str, Any]] = []
        for record in records:
            kind, body = codec.encode_record(record)
            event_id = uuid.uuid4().hex
            received = kind == "event_received"
            rows.append(
                {
                    "execution_id": execution_id,
                    "seq": record.seq,
                    "event_id": event_id,
                    "tenant": tenant,
                    "kind": kind,
                    "name": body.get("name") if received else None,
                    "body": body,
                    "role": body.get("role") if received else None,
                    "client_key": client_key if received else None,
                    "status": "pending" if received else None,
                    "outcome": None,
                    "detail": None,
                    "created_at": now,
                    "processed_at": None,
                }
            )
            if received:
                wakeups.append(
                    {
                        "execution_id": execution_id,
                        "tenant": tenant,
                        "event_id": event_id,
                        "created_at": now,
                        "relayed_at": now if published else None,
                    }
                )
        # the database transport's idle workers LISTEN; a broker's are woken by the broker
        # (and a NOTIFY would queue every notifying commit behind one lock)
        notify = bool(wakeups) and self.dialect == "postgresql" and not published
        # on PostgreSQL one statement, whatever is appended, its NOTIFY included: a worker's
        # commit of an event's records too (psycopg's executemany pipelines the rows, at
        # several times the CPU)
        if self._appends_in_one_statement(len(rows)):
            columns = tuple(rows[0])
            params = {f"r{n}_{c}": row[c] for n, row in enumerate(rows) for c in columns}
            if execution is not None:
                params.update({f"x_{c}": value for c, value in execution.items()})
            if wakeups:
                params["wakeup_created_at"] = now
                params["wakeup_relayed_at"] = now if published else None
            statement = _appending(
                columns, len(rows), tuple(execution or ()), bool(wakeups), only_if_latest, notify
            )
            written = direct.run(conn, statement, params).scalar()
            if only_if_latest and not written:
                return None
        else:
            assert not only_if_latest, "checked before, outside the statement"
            if execution is not None:
                direct.run(conn, _INSERT_EXECUTION, execution)
            if rows:
                direct.run(conn, _INSERT_EVENTS, rows)
            if wakeups:
                direct.run(conn, _INSERT_WAKEUPS, wakeups)
            if notify:
                direct.run(conn, _NOTIFY, {"execution_id": execution_id})
        return [row["event_id"] for row in rows]

    def _appends_in_one_statement(self, count: int) -> bool:
        """Whether :meth:`_insert_records` writes ``count`` records in one statement."""
        return self.dialect == "postgresql" and 0 < count <= _APPEND_IN_ONE_STATEMENT

    def records(
        self, conn: Connection, execution_id: str, tenant: str, *, after: int = 0
    ) -> list[StoredRecord]:
        """The execution's records with seq greater than ``after``, in seq order."""
        rows = direct.run(
            conn, _RECORDS, {"execution_id": execution_id, "tenant": tenant, "after": after}
        )
        return [
            StoredRecord(
                record=codec.decode_record(r.kind, r.seq, r.body),
                event_id=r.event_id,
                status=r.status,
                outcome=r.outcome,
                detail=r.detail,
                client_key=r.client_key,
                created_at=r.created_at,
                processed_at=r.processed_at,
            )
            for r in rows
        ]

    def event_row(self, conn: Connection, event_id: str, tenant: str) -> Any:
        """The row of event ``event_id`` if it belongs to ``tenant``."""
        return conn.execute(
            sa.select(events).where(events.c.event_id == event_id, events.c.tenant == tenant)
        ).first()

    def set_event_outcome(
        self,
        conn: Connection,
        execution_id: str,
        seq: int,
        *,
        status: str,
        outcome: str | None,
        detail: str | None,
    ) -> None:
        """Record how the event at ``seq`` was decided and processed."""
        direct.run(
            conn,
            _SET_EVENT_OUTCOME,
            {
                "key_execution_id": execution_id,
                "key_seq": seq,
                "status": status,
                "outcome": outcome,
                "detail": detail,
                "processed_at": self.clock(),
            },
        )

    def save_projection(self, conn: Connection, execution_id: str, state: State) -> None:
        """Store ``state`` as the execution's projection, and as a snapshot every
        ``snapshot_every`` records."""
        direct.run(
            conn,
            _SAVE_PROJECTION,
            {
                "key_id": execution_id,
                "state": state.name,
                "context": dict(state.context),
                "status": state.status.value,
                "projection_seq": state.seq,
                "decided_seq": state.decided_seq,
                "updated_at": self.clock(),
            },
        )

    def pin_version(self, conn: Connection, execution_id: str, version: int) -> None:
        """Inside the transaction that records a migration: pin the execution's projection to
        workflow ``version``."""
        conn.execute(
            executions.update()
            .where(executions.c.id == execution_id)
            .values(version=version, updated_at=self.clock())
        )

    def executions_on(
        self,
        conn: Connection,
        workflow: str,
        version: int,
        *,
        statuses: Collection[str],
        tenant: str | None = None,
    ) -> list[tuple[str, str]]:
        """The ``(execution_id, tenant)`` of every execution of ``workflow`` pinned to
        ``version`` whose status is in ``statuses``, of ``tenant`` (or of every tenant the
        transaction may see when ``None``), oldest first."""
        query = sa.select(executions.c.id, executions.c.tenant).where(
            executions.c.workflow == workflow,
            executions.c.version == version,
            executions.c.status.in_(list(statuses)),
        )
        if tenant is not None:
            query = query.where(executions.c.tenant == tenant)
        query = query.order_by(executions.c.created_at, executions.c.id)
        return [(r.id, r.tenant) for r in conn.execute(query)]

    def latest_snapshot(self, conn: Connection, execution_id: str, tenant: str) -> State | None:
        """The newest snapshot of the execution, if any."""
        body = conn.execute(
            sa.select(snapshots.c.state)
            .where(snapshots.c.execution_id == execution_id, snapshots.c.tenant == tenant)
            .order_by(snapshots.c.seq.desc())
            .limit(1)
        ).scalar()
        return None if body is None else codec.decode_state(body)

    def save_snapshot(self, conn: Connection, execution_id: str, tenant: str, state: State) -> None:
        """Store ``state`` as a snapshot at its seq."""
        conn.execute(
            snapshots.insert().values(
                execution_id=execution_id,
                tenant=tenant,
                seq=state.seq,
                state=codec.encode_state(state),
            )
        )

    def snapshot_states(
        self, execution_id: str, tenant: str, *, conn: Connection | None = None
    ) -> list[State]:
        """Every snapshot of the execution, oldest first (read in ``conn``'s transaction, or
        in one of its own)."""
        if conn is None:
            with self.read(tenant=tenant) as own:
                return self.snapshot_states(execution_id, tenant, conn=own)
        rows = direct.run(conn, _SNAPSHOT_STATES, {"execution_id": execution_id, "tenant": tenant})
        return [codec.decode_state(r.state) for r in rows]

    # ----------------------------------------------------------------------------------------
    # Wake-ups, leases and fencing
    # ----------------------------------------------------------------------------------------

    def claim(
        self, owner: str, ttl: float, *, tenant_limit: int | None = None
    ) -> tuple[str, str, int] | None:
        """Take the lease of one execution with an unhandled wake-up, oldest first; returns
        ``(execution_id, tenant, token)`` or ``None`` when there is nothing free to take.

        With ``tenant_limit``, each tenant's oldest wake-up of an execution nobody holds is a
        candidate, and the tenant whose executions hold the fewest live leases goes first (the
        oldest wake-up breaks ties): a tenant with a long queue does not hold back another's
        single event, and a tenant already holding ``tenant_limit`` live leases is passed
        over. Two claims racing may each see the tenant one below its limit: the limit is kept
        to within the number of claiming workers.

        On PostgreSQL the wake-ups are read ``FOR UPDATE SKIP LOCKED`` in the same transaction
        that takes the lease, so concurrent workers are handed different executions.
        """
        now = self.clock()
        if tenant_limit is None:
            query, params = _CLAIM[self.dialect], {"now": now}
        else:
            query = _CLAIM_FAIRLY[self.dialect]
            params = {"now": now, "tenant_limit": tenant_limit}
        with self.write(tenant=ALL_TENANTS) as conn:
            seen: set[str] = set()
            for row in direct.run(conn, query, params).all():
                if row.execution_id in seen:
                    continue
                seen.add(row.execution_id)
                token = self._take_lease(
                    conn, row.execution_id, owner, ttl, now, skip_locked=True, tenant=row.tenant
                )
                if token is not None:
                    return row.execution_id, row.tenant, token
        return None

    def tenant_at_limit(self, tenant: str, limit: int) -> bool:
        """Whether ``tenant``'s executions hold ``limit`` or more live leases."""
        with self.read(tenant=ALL_TENANTS) as conn:
            held = conn.execute(
                sa.select(sa.func.count())
                .select_from(leases)
                .where(leases.c.tenant == tenant, leases.c.expires_at > self.clock())
            ).scalar_one()
        return int(held) >= limit

    def pending_executions(self, limit: int) -> list[tuple[str, str]]:
        """Up to ``limit`` ``(execution_id, tenant)`` whose ledger holds an undecided event and
        no live lease: the sweep that finds work whose wake-up was lost."""
        params = {"now": self.clock(), "limit": limit}
        with self.read(tenant=ALL_TENANTS) as conn:
            return [
                (r.execution_id, r.tenant) for r in direct.run(conn, _PENDING_EXECUTIONS, params)
            ]

    def has_work(self, *, besides: Collection[str] = ()) -> bool:
        """Whether any wake-up is unhandled or any event undecided, leased or not, in an
        execution not named in ``besides``: what a worker asks before deciding that no work is
        left. Takes no locks."""
        with self.read(tenant=ALL_TENANTS) as conn:
            wakeup = conn.execute(
                sa.select(outbox.c.id)
                .where(outbox.c.published_at.is_(None), outbox.c.execution_id.not_in(besides))
                .limit(1)
            ).first()
            if wakeup is not None:
                return True
            pending = conn.execute(
                sa.select(events.c.seq)
                .where(events.c.status == "pending", events.c.execution_id.not_in(besides))
                .limit(1)
            ).first()
            return pending is not None

    def finish(
        self,
        conn: Connection,
        execution_id: str,
        *,
        outcomes: Sequence[tuple[int, str, str | None, str | None]] = (),
        projection: State | None = None,
        handled: bool = False,
        release: tuple[str, int] | None = None,
        cancel_timers: bool | None = None,
    ) -> None:
        """Inside a write transaction that renewed the lease (:meth:`fence`), what ends the
        processing of events: record each ``(seq, status, outcome, detail)`` of ``outcomes``
        (:meth:`set_event_outcome`), save ``projection`` (:meth:`save_projection`), mark the
        wake-ups ``handled`` (:meth:`mark_handled`, the events decided here counting as
        decided), give up the lease ``release`` (``owner``, ``token``;
        :meth:`give_up_lease`) and, unless ``cancel_timers`` is ``None``, cancel armed timers
        (:meth:`cancel_timers` with ``scheduled=cancel_timers``). On PostgreSQL it is one
        statement."""
        if not (
            outcomes
            or projection is not None
            or handled
            or release is not None
            or cancel_timers is not None
        ):
            return
        # the one statement counts the events of ``outcomes`` as decided, and updates each
        # once: one set back to pending, or one given twice (neither is, as the engine
        # decides), goes statement by statement, in order
        seqs = {o[0] for o in outcomes}
        if (
            self.dialect != "postgresql"
            or len(seqs) < len(outcomes)
            or any(o[1] == "pending" for o in outcomes)
        ):
            for seq, status, outcome, detail in outcomes:
                self.set_event_outcome(
                    conn, execution_id, seq, status=status, outcome=outcome, detail=detail
                )
            if projection is not None:
                self.save_projection(conn, execution_id, projection)
            if handled:
                self.mark_handled(conn, execution_id)
            if release is not None:
                self.give_up_lease(conn, execution_id, *release)
            if cancel_timers is not None:
                self.cancel_timers(conn, execution_id, scheduled=cancel_timers)
            return
        now = self.clock()
        params: dict[str, Any] = {"execution_id": execution_id}
        for n, (seq, status, outcome, detail) in enumerate(outcomes):
            params.update(
                {
                    f"o{n}_seq": seq,
                    f"o{n}_status": status,
                    f"o{n}_outcome": outcome,
                    f"o{n}_detail": detail,
                }
            )
        if outcomes:
            params["processed_at"] = now
        if projection is not None:
            params.update(
                {
                    "p_state": projection.name,
                    "p_context": dict(projection.context),
                    "p_status": projection.status.value,
                    "p_projection_seq": projection.seq,
                    "p_decided_seq": projection.decided_seq,
                    "p_updated_at": now,
                }
            )
        if handled:
            params["published_at"] = now
        if release is not None:
            params["owner"], params["token"] = release
        if cancel_timers is not None:
            params["cancelled_at"] = now
        statement = _finishing(
            len(outcomes), projection is not None, handled, release is not None, cancel_timers
        )
        direct.run(conn, statement, params)

    def mark_handled(self, conn: Connection, execution_id: str) -> None:
        """Mark the execution's wake-ups handled, except those whose event is still pending
        (it may have committed after the caller last looked)."""
        direct.run(
            conn, _MARK_HANDLED, {"key_execution_id": execution_id, "published_at": self.clock()}
        )

    def take_lease(
        self, execution_id: str, owner: str, ttl: float, *, tenant: str | None = None
    ) -> int | None:
        """Take the execution's lease for ``ttl`` seconds if it is free or expired; returns the
        new fencing token, or ``None`` if it is held (by anyone, ``owner`` included: two threads
        of one worker never share an execution). ``tenant``, the execution's, is kept with the
        lease for per-tenant limits."""
        try:
            with self.write() as conn:
                return self._take_lease(conn, execution_id, owner, ttl, self.clock(), tenant=tenant)
        except sa.exc.IntegrityError:
            return None  # another worker inserted the lease first

    def take_lease_in(
        self,
        conn: Connection,
        execution_id: str,
        owner: str,
        ttl: float,
        *,
        tenant: str | None = None,
    ) -> int | None:
        """:meth:`take_lease` inside the caller's write transaction: the lease is held once
        that transaction commits, and not at all if it rolls back."""
        return self._take_lease(conn, execution_id, owner, ttl, self.clock(), tenant=tenant)

    def _take_lease(
        self,
        conn: Connection,
        execution_id: str,
        owner: str,
        ttl: float,
        now: float,
        *,
        skip_locked: bool = False,
        tenant: str | None = None,
    ) -> int | None:
        """Take the lease in ``conn``'s transaction. With ``skip_locked`` (a claim, which
        already holds outbox rows) a lease row another transaction has locked counts as busy
        instead of being waited for: waiting could deadlock with a commit that holds the
        lease and waits for those outbox rows. Without it the call waits, so a worker handed
        a wake-up sees the lease either still held or given up (see
        :meth:`ledgerflow.engine.Engine.process` with ``release_when_idle``)."""
        if not skip_locked:
            # one statement: a new row, or the free (or expired) one taken over, else nothing
            taken = direct.run(
                conn,
                _TAKE_LEASE[self.dialect],
                {
                    "execution_id": execution_id,
                    "owner": owner,
                    "expires_at": now + ttl,
                    "tenant": tenant,
                    "now": now,
                },
            ).first()
            return None if taken is None else int(taken.token)
        query = sa.select(leases).where(leases.c.execution_id == execution_id)
        if self.dialect == "postgresql":
            query = query.with_for_update(skip_locked=skip_locked)
        row = conn.execute(query).first()
        if row is None and skip_locked and self.dialect == "postgresql":
            exists = conn.execute(
                sa.select(leases.c.execution_id).where(leases.c.execution_id == execution_id)
            ).first()
            if exists is not None:
                return None  # locked by someone else: busy
        if row is None:
            # a new row, unless another worker inserted it first (no savepoint: a round trip
            # each way saved)
            inserted = direct.run(
                conn,
                _INSERT_NEW_LEASE[self.dialect],
                {
                    "execution_id": execution_id,
                    "owner": owner,
                    "expires_at": now + ttl,
                    "tenant": tenant,
                },
            ).first()
            return None if inserted is None else 1
        if row.expires_at > now:
            return None
        token = int(row.token) + 1
        values: dict[str, Any] = {"owner": owner, "token": token, "expires_at": now + ttl}
        if tenant is not None:
            values["tenant"] = tenant
        conn.execute(leases.update().where(leases.c.execution_id == execution_id).values(values))
        return token

    def fence(
        self,
        conn: Connection,
        execution_id: str,
        owner: str,
        token: int,
        ttl: float,
        *,
        lock: bool = False,
    ) -> None:
        """Inside a write transaction: renew the lease, or raise :class:`LeaseLostError` if
        ``owner`` no longer holds it with ``token``. Every commit of a worker passes here.
        With ``lock``, then :meth:`lock_execution`: on PostgreSQL in the same statement (the
        lease renewed, its row locked, then the execution's row locked)."""
        params = {
            "key_execution_id": execution_id,
            "key_owner": owner,
            "key_token": token,
            "expires_at": self.clock() + ttl,
        }
        if lock and self.dialect == "postgresql":
            held = direct.run(conn, _FENCE_AND_LOCK, params).first() is not None
        else:
            held = direct.run(conn, _FENCE, params).rowcount == 1
        if not held:
            raise _lease_lost(execution_id, owner, token)

    def check_lease(self, conn: Connection, execution_id: str, owner: str, token: int) -> None:
        """Inside a write transaction: raise :class:`LeaseLostError` unless ``owner`` holds
        the lease with ``token``; on PostgreSQL the lease row is then share-locked until the
        transaction ends, so no take-over can slip in before it commits, while sibling steps
        of the same event check it at the same time (a renewal, :meth:`fence`, would make
        them wait on each other)."""
        if self.action_engine is not None and conn.engine is self.action_engine:
            # a confined session may not read the leases: the owner's function checks for it
            held = direct.run(
                conn,
                _CHECK_LEASE_CONFINED,
                {"execution_id": execution_id, "owner": owner, "token": token},
            ).scalar()
        else:
            query = _CHECK_LEASE_SHARED if self.dialect == "postgresql" else _CHECK_LEASE
            held = direct.run(
                conn, query, {"execution_id": execution_id, "owner": owner, "token": token}
            ).first()
        if held is None:
            raise _lease_lost(execution_id, owner, token)

    def renew_lease(
        self, execution_id: str, owner: str, token: int, ttl: float, *, parked: bool = False
    ) -> bool:
        """Extend a held lease; ``False`` if it was lost or given up. A lease its holder gave
        up (``expires_at`` 0) is never brought back: a renewal racing with the release (the
        worker's renewer thread took its list of leases just before) must not hold the
        execution for another ``ttl`` with nobody working on it. A ``parked`` lease (an
        execution held back after a failure, nobody working on it) no longer counts towards
        its tenant's limit."""
        statement = _RENEW_PARKED_LEASE if parked else _RENEW_LEASE
        params = {**_held_params(execution_id, owner, token), "expires_at": self.clock() + ttl}
        with self.write() as conn:
            renewed: int = direct.run(conn, statement, params).rowcount
        return renewed == 1

    def release_lease(self, execution_id: str, owner: str, token: int) -> None:
        """Give the lease up at once (the token stays, so fencing keeps counting up)."""
        with self.write() as conn:
            self.give_up_lease(conn, execution_id, owner, token)

    def release_stray_lease(self, execution_id: str, owner: str, token: int) -> None:
        """Give up a lease taken for a wake-up whose execution is not there for its tenant.
        When no tenant has an execution of that id (a forged or corrupt message) the lease's
        row goes too, so such messages leave nothing behind; otherwise the lease is given up
        as :meth:`release_lease` does, its token kept."""
        held = _held_by(execution_id, owner, token)
        with self.write(tenant=ALL_TENANTS) as conn:
            absent = ~sa.exists().where(executions.c.id == execution_id)
            if not conn.execute(leases.delete().where(held, absent)).rowcount:
                conn.execute(leases.update().where(held).values(expires_at=0.0))

    def give_up_lease(self, conn: Connection, execution_id: str, owner: str, token: int) -> None:
        """Inside a write transaction that renewed the lease first (:meth:`fence`): give it up
        when the transaction commits (as :meth:`release_lease` does)."""
        direct.run(conn, _RELEASE_LEASE, _held_params(execution_id, owner, token))

    # ----------------------------------------------------------------------------------------
    # Timers
    # ----------------------------------------------------------------------------------------

    def arm_timers(
        self,
        conn: Connection,
        execution_id: str,
        tenant: str,
        armed_seq: int,
        timed: Sequence[tuple[str, float]],
        *,
        at: Sequence[tuple[str, float]] = (),
    ) -> list[str]:
        """Inside the transaction that enters a state: arm one timer per ``(event, seconds)``
        of ``timed``, due ``seconds`` from now, and one per ``(event, due_at)`` of ``at``, due
        at that time; returns their ids."""
        now = self.clock()
        due = [(event, now + seconds) for event, seconds in timed] + list(at)
        rows: list[dict[str, Any]] = [
            {
                "id": uuid.uuid4().hex,
                "tenant": tenant,
                "execution_id": execution_id,
                "event": event,
                "due_at": due_at,
                "armed_seq": armed_seq,
                "state": "armed",
                "kind": "state",
                "created_at": now,
            }
            for event, due_at in due
        ]
        if rows:
            direct.run(conn, _INSERT_TIMERS, rows)
        return [row["id"] for row in rows]

    def schedule_timer(
        self,
        conn: Connection,
        timer_id: str,
        execution_id: str,
        tenant: str,
        event: str,
        due_at: float,
        payload: Mapping[str, Any],
    ) -> bool:
        """Inside a step's transaction: arm timer ``timer_id`` to append ``event`` with
        ``payload`` at ``due_at``, whatever state the execution is in then; it is cancelled
        only when the execution completes. ``False`` if a timer with that id exists already
        (the step ran before)."""
        if conn.execute(sa.select(timers.c.id).where(timers.c.id == timer_id)).first():
            return False
        conn.execute(
            timers.insert().values(
                id=timer_id,
                tenant=tenant,
                execution_id=execution_id,
                event=event,
                due_at=due_at,
                armed_seq=0,
                state="armed",
                kind="step",
                payload=dict(payload),
                created_at=self.clock(),
            )
        )
        return True

    def cancel_timers(self, conn: Connection, execution_id: str, *, scheduled: bool = False) -> int:
        """Inside the transaction that leaves a state: cancel the execution's armed timers
        of states (with ``scheduled``, those steps scheduled too: the execution completed);
        returns how many were cancelled (a timer fired already stays fired)."""
        query = _CANCEL_TIMERS if scheduled else _CANCEL_STATE_TIMERS
        params = {"key_execution_id": execution_id, "cancelled_at": self.clock()}
        return int(direct.run(conn, query, params).rowcount)

    def due_timers(self, now: float, limit: int) -> list[tuple[str, str, str]]:
        """Up to ``limit`` armed timers due at ``now`` or before, soonest first, as
        ``(timer_id, execution_id, tenant)``. Takes no locks: :meth:`claim_timer` does."""
        with self.read(tenant=ALL_TENANTS) as conn:
            rows = conn.execute(_DUE_TIMERS, {"now": now, "limit": limit}).all()
        return [(r.id, r.execution_id, r.tenant) for r in rows]

    def claim_timer(self, conn: Connection, timer_id: str, now: float) -> Any:
        """Inside a write transaction: the timer's row if it is still armed and due at ``now``
        and nobody else is firing it, else ``None``.

        On PostgreSQL the execution's row is locked first and the timer's after it, both
        ``SKIP LOCKED``: the order in which a worker processing the execution takes them
        (execution, then timers it cancels), and a busy row is skipped rather than waited for,
        so firing never deadlocks with processing and two workers never fire one timer at
        once. On SQLite the write transaction (``BEGIN IMMEDIATE``) already serialises them.
        """
        query = sa.select(timers).where(
            timers.c.id == timer_id, timers.c.state == "armed", timers.c.due_at <= now
        )
        if self.dialect == "postgresql":
            execution_id = conn.execute(
                sa.select(timers.c.execution_id).where(timers.c.id == timer_id)
            ).scalar()
            locked = conn.execute(
                sa.select(executions.c.id)
                .where(executions.c.id == execution_id)
                .with_for_update(skip_locked=True)
            ).first()
            if locked is None:
                return None
            query = query.with_for_update(skip_locked=True)
        return conn.execute(query).first()

    def mark_timer_fired(self, conn: Connection, timer_id: str, event_id: str) -> None:
        """Inside the transaction that appended the timer's event: mark the timer fired."""
        conn.execute(
            timers.update()
            .where(timers.c.id == timer_id)
            .values(state="fired", fired_at=self.clock(), fired_event_id=event_id)
        )

    def timer_rows(self, conn: Connection, execution_id: str, tenant: str) -> list[Any]:
        """The execution's timers, in the order they were armed."""
        return list(
            conn.execute(
                sa.select(timers)
                .where(timers.c.execution_id == execution_id, timers.c.tenant == tenant)
                .order_by(timers.c.created_at, timers.c.armed_seq, timers.c.event)
            ).all()
        )

    def next_due(self) -> float | None:
        """When the soonest armed timer is due, if any is armed."""
        with self.read(tenant=ALL_TENANTS) as conn:
            due = conn.execute(
                sa.select(sa.func.min(timers.c.due_at)).where(timers.c.state == "armed")
            ).scalar()
        return None if due is None else float(due)

    # ----------------------------------------------------------------------------------------
    # Broker transports: the outbox relay, dead letters, worker heartbeats
    # ----------------------------------------------------------------------------------------

    def relay_claim(
        self, *, older_than: float, again_after: float, limit: int
    ) -> list[tuple[str, str, str]]:
        """Take up to ``limit`` unhandled wake-ups committed more than ``older_than`` seconds
        ago and not relayed in the last ``again_after`` seconds, mark them relayed now, and
        return them as ``(execution_id, tenant, event_id)``, oldest first. On PostgreSQL the
        rows are read ``FOR UPDATE SKIP LOCKED``, so concurrent relays take different rows."""
        now = self.clock()
        query = (
            sa.select(outbox.c.id, outbox.c.execution_id, outbox.c.tenant, outbox.c.event_id)
            .where(
                outbox.c.published_at.is_(None),
                outbox.c.created_at <= now - older_than,
                sa.or_(outbox.c.relayed_at.is_(None), outbox.c.relayed_at <= now - again_after),
            )
            .order_by(outbox.c.id)
            .limit(limit)
        )
        if self.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)
        with self.write(tenant=ALL_TENANTS) as conn:
            rows = conn.execute(query).all()
            if rows:
                conn.execute(
                    outbox.update()
                    .where(outbox.c.id.in_([r.id for r in rows]))
                    .values(relayed_at=now)
                )
        return [(r.execution_id, r.tenant, r.event_id) for r in rows]

    def insert_dead_letter(
        self,
        *,
        transport: str,
        transport_id: str,
        message: dict[str, Any],
        reason: str,
        deliveries: int,
        tenant: str | None = None,
        execution_id: str | None = None,
        event_id: str | None = None,
    ) -> str:
        """Record a message a transport dead-lettered; returns its id here."""
        new_id = uuid.uuid4().hex
        with self.write(tenant=ALL_TENANTS) as conn:
            conn.execute(
                dead_letters.insert().values(
                    id=new_id,
                    tenant=tenant,
                    execution_id=execution_id,
                    event_id=event_id,
                    transport=transport,
                    transport_id=transport_id,
                    message=message,
                    reason=reason.replace("\x00", "\\x00"),
                    deliveries=deliveries,
                    created_at=self.clock(),
                )
            )
        return new_id

    def dead_letter_rows(self, *, include_settled: bool = False, limit: int = 1000) -> list[Any]:
        """Dead letters, newest first; without ``include_settled`` only those neither retried
        nor discarded."""
        query = sa.select(dead_letters).order_by(dead_letters.c.created_at.desc()).limit(limit)
        if not include_settled:
            query = query.where(
                dead_letters.c.retried_at.is_(None), dead_letters.c.discarded_at.is_(None)
            )
        with self.read(tenant=ALL_TENANTS) as conn:
            return list(conn.execute(query).all())

    def dead_letter_row(self, dead_letter_id: str) -> Any:
        """The dead letter ``dead_letter_id``, or ``None``."""
        with self.read(tenant=ALL_TENANTS) as conn:
            return conn.execute(
                sa.select(dead_letters).where(dead_letters.c.id == dead_letter_id)
            ).first()

    def settle_dead_letter(
        self,
        dead_letter_id: str,
        *,
        how: str,
        by: str | None = None,
        reason: str | None = None,
    ) -> bool:
        """Mark a dead letter ``retried`` or ``discarded``, keeping who did it and why with
        it; ``False`` if it was settled already (or does not exist)."""
        column = {"retried": "retried_at", "discarded": "discarded_at"}[how]
        with self.write(tenant=ALL_TENANTS) as conn:
            return bool(
                conn.execute(
                    dead_letters.update()
                    .where(
                        dead_letters.c.id == dead_letter_id,
                        dead_letters.c.retried_at.is_(None),
                        dead_letters.c.discarded_at.is_(None),
                    )
                    .values({column: self.clock(), "settled_by": by, "settle_reason": reason})
                ).rowcount
            )

    def beat(self, worker: dict[str, Any]) -> None:
        """Write a worker's heartbeat: its row, with ``last_beat`` now."""
        values = {**worker, "last_beat": self.clock()}
        with self.write() as conn:
            done = conn.execute(
                workers.update().where(workers.c.id == values["id"]).values(**values)
            ).rowcount
            if not done:
                conn.execute(workers.insert().values(**values))

    def worker_rows(self) -> list[Any]:
        """Every worker that ever beat, the most recent first."""
        with self.read() as conn:
            return list(conn.execute(sa.select(workers).order_by(workers.c.last_beat.desc())).all())

    # ----------------------------------------------------------------------------------------
    # Action results
    # ----------------------------------------------------------------------------------------

    def action_result(self, conn: Connection, key: str) -> tuple[bool, Any]:
        """``(True, result)`` if a result is recorded under idempotency ``key``, else
        ``(False, None)``."""
        row = direct.run(conn, _ACTION_RESULT, {"key": key}).first()
        return (False, None) if row is None else (True, row.result)

    def action_results_for(
        self, conn: Connection, execution_id: str, event_ids: Collection[str], *, tenant: str
    ) -> dict[str, Any]:
        """Every result recorded for the steps of the execution's events ``event_ids``, by
        idempotency key; none if the execution is not ``tenant``'s."""
        if not event_ids:
            return {}
        if self.dialect == "postgresql":
            params = {"tenant": tenant, "execution_id": execution_id, "event_ids": list(event_ids)}
            rows = direct.run(conn, _RESULTS_OF_EVENTS, params)
        else:
            rows = conn.execute(
                sa.select(action_results.c.key, action_results.c.result).where(
                    action_results.c.tenant == tenant,
                    action_results.c.execution_id == execution_id,
                    action_results.c.event_id.in_(list(event_ids)),
                )
            )
        return {row.key: row.result for row in rows}

    def insert_action_result(
        self,
        conn: Connection,
        *,
        key: str,
        tenant: str,
        execution_id: str,
        event_id: str,
        step_id: str,
        action: str,
        result: Any,
        attempts: int,
        lease: tuple[str, int] | None = None,
    ) -> None:
        """Record an action's result under its idempotency key. A second record under the same
        key raises :class:`sqlalchemy.exc.IntegrityError`: the key is unique.

        With ``lease`` (``(owner, token)``), :meth:`check_lease` is part of the same
        statement: the result is recorded only if ``owner`` still holds the execution's lease
        with ``token`` (its row share-locked on PostgreSQL until the transaction ends, as
        there), else :class:`LeaseLostError` is raised and nothing is recorded."""
        params = {
            "key": key,
            "tenant": tenant,
            "execution_id": execution_id,
            "event_id": event_id,
            "step_id": step_id,
            "action": action,
            "result": result,
            "attempts": attempts,
            "created_at": self.clock(),
        }
        if lease is None:
            direct.run(conn, _INSERT_ACTION_RESULT, params)
            return
        owner, token = lease
        if self.action_engine is not None and conn.engine is self.action_engine:
            statement = _INSERT_FENCED_RESULT_CONFINED
        elif self.dialect == "postgresql":
            statement = _INSERT_FENCED_RESULT_SHARED
        else:
            statement = _INSERT_FENCED_RESULT
        inserted = direct.run(conn, statement, {**params, "owner": owner, "token": token}).rowcount
        if inserted != 1:
            raise _lease_lost(execution_id, owner, token)

    def insert_action_results(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Inside the transaction that commits an event's records (which checks the caller's
        lease): record the results of the actions its steps ran that are not checkpointed,
        each a mapping of ``key``, ``tenant``, ``execution_id``, ``event_id``, ``step_id``,
        ``action``, ``result`` and ``attempts``. A key recorded already keeps its first
        result, as :meth:`insert_action_result` keeps it."""
        if not rows:
            return
        now = self.clock()
        dated = [{**row, "created_at": now} for row in rows]
        if self.dialect == "postgresql":
            direct.run(conn, _INSERT_LATE_RESULTS_PG, {"rows": dated})
        else:
            direct.run(conn, _INSERT_LATE_RESULTS, dated)

    # ----------------------------------------------------------------------------------------
    # Circuit breakers (the rules live in ledgerflow.breakers; each method here is one atomic
    # statement, so concurrent workers never read a state and then write over a newer one)
    # ----------------------------------------------------------------------------------------

    def breaker_row(self, conn: Connection, action: str) -> Any:
        """The circuit breaker row of ``action``, or ``None``: closed, no failure ever counted."""
        return conn.execute(
            sa.select(circuit_breakers).where(circuit_breakers.c.action == action)
        ).first()

    def breaker_rows(self, conn: Connection) -> list[Any]:
        """Every circuit breaker row, by action name."""
        return list(conn.execute(sa.select(circuit_breakers).order_by(circuit_breakers.c.action)))

    def count_breaker_failure(
        self, conn: Connection, action: str, *, threshold: int, error: str, now: float
    ) -> Any:
        """Count one more consecutive failure of ``action`` and return its row as it now is.

        One statement, an upsert (``INSERT … ON CONFLICT (action) DO UPDATE``): the row is
        created at the first failure, and two workers counting at once both count, whichever
        inserts first. The circuit opens (``opened_at = now``) when the count reaches
        ``threshold`` while closed, and at once while half-open (its trial failed); an open
        circuit stays open from when it opened.
        """
        t = circuit_breakers
        insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        first_opens = threshold <= 1
        statement = insert(t).values(
            action=action,
            state="open" if first_opens else "closed",
            failures=1,
            opened_at=now if first_opens else None,
            last_error=error,
            updated_at=now,
        )
        # the SET expressions read the row as it was before this statement
        opens = sa.or_(
            t.c.state == "half_open",
            sa.and_(t.c.state == "closed", t.c.failures + 1 >= threshold),
        )
        upsert = statement.on_conflict_do_update(
            index_elements=[t.c.action],
            set_={
                "failures": t.c.failures + 1,
                "state": sa.case((opens, "open"), else_=t.c.state),
                "opened_at": sa.case((opens, sa.literal(now, sa.Double)), else_=t.c.opened_at),
                "last_error": statement.excluded.last_error,
                "updated_at": statement.excluded.updated_at,
            },
        ).returning(t.c.state, t.c.failures, t.c.opened_at)
        return conn.execute(upsert).one()

    def take_breaker_trial(
        self, conn: Connection, action: str, *, cutoff: float, now: float
    ) -> bool:
        """Admit one trial call of ``action``: if its circuit is open, or half-open with a trial
        admitted, since ``cutoff`` or before, make it half-open with a trial admitted at
        ``now``. ``True`` only for the caller whose statement changed the row.

        One conditional ``UPDATE``: on SQLite writers take turns (``BEGIN IMMEDIATE``); on
        PostgreSQL a concurrent caller waits for the row lock, then re-checks the condition
        against the row the winner wrote, which no longer meets it.
        """
        t = circuit_breakers
        changed = conn.execute(
            t.update()
            .where(
                t.c.action == action,
                t.c.state.in_(("open", "half_open")),
                t.c.opened_at <= cutoff,
            )
            .values(state="half_open", opened_at=now, updated_at=now)
        ).rowcount
        return bool(changed == 1)

    def close_breaker(self, conn: Connection, action: str, *, now: float) -> bool:
        """Close the circuit of ``action`` and zero its failures; writes nothing (and returns
        ``False``) when it is closed with no failure already. The last error is kept."""
        t = circuit_breakers
        changed = conn.execute(
            t.update()
            .where(t.c.action == action, sa.or_(t.c.state != "closed", t.c.failures != 0))
            .values(state="closed", failures=0, opened_at=None, updated_at=now)
        ).rowcount
        return bool(changed == 1)

    # ----------------------------------------------------------------------------------------
    # Counting, for status and tests
    # ----------------------------------------------------------------------------------------

    def row_counts(self) -> dict[str, int]:
        """The number of rows in each ledgerflow table."""
        tables = (
            definitions,
            executions,
            events,
            outbox,
            action_results,
            leases,
            snapshots,
            circuit_breakers,
            dead_letters,
            workers,
            timers,
        )
        with self.read(tenant=ALL_TENANTS) as conn:
            return {
                t.name: int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())
                for t in tables
            }


def _held_params(execution_id: str, owner: str, token: int) -> dict[str, Any]:
    """The parameters of :data:`_HELD_LEASE`."""
    return {"key_execution_id": execution_id, "key_owner": owner, "key_token": token}


def _held_by(execution_id: str, owner: str, token: int) -> sa.ColumnElement[bool]:
    """The lease row of ``execution_id`` as ``owner`` holds it with ``token``."""
    return sa.and_(
        leases.c.execution_id == execution_id, leases.c.owner == owner, leases.c.token == token
    )
