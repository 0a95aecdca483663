"""The ledger's tables, for SQLite and PostgreSQL alike (SQLAlchemy Core).

Every table that holds an execution's data carries its ``tenant``; every query the store makes
filters on it. Times are seconds since the epoch (``DOUBLE PRECISION``), taken from the engine's
injectable clock. The Alembic revisions under ``store/migrations`` create exactly these tables;
``tests/store`` checks that the two agree.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

__all__ = [
    "action_results",
    "circuit_breakers",
    "confined_roles",
    "dead_letters",
    "definitions",
    "events",
    "executions",
    "leases",
    "metadata",
    "outbox",
    "snapshots",
    "timers",
    "wall_secret",
    "workers",
]

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
        "fk": "fk_%(table_name)s_%(referred_table_name)s",
    }
)

JSONB = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
ID = sa.String(64)
TENANT = sa.String(200)
NAME = sa.String(200)

definitions = sa.Table(
    "lf_definitions",
    metadata,
    sa.Column("name", NAME, primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("body", JSONB, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("registered_at", sa.Double, nullable=False),
)

executions = sa.Table(
    "lf_executions",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("tenant", TENANT, nullable=False),
    sa.Column("workflow", NAME, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    # the projection: the state folded up to projection_seq, written by the worker that holds
    # the lease; a cache of the ledger, never the truth
    sa.Column("state", NAME, nullable=False),
    sa.Column("context", JSONB, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("projection_seq", sa.Integer, nullable=False),
    sa.Column("decided_seq", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.Index(None, "tenant", "workflow", "status"),
    # what the rows of an execution refer to: its id with its tenant, so that no row can pair
    # one tenant with another tenant's execution
    sa.UniqueConstraint("id", "tenant"),
)

_OF_THE_EXECUTION = ("execution_id", "tenant"), ("lf_executions.id", "lf_executions.tenant")

events = sa.Table(
    "lf_events",
    metadata,
    sa.Column("execution_id", ID, primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("event_id", ID, nullable=False, unique=True),
    sa.Column("tenant", TENANT, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("name", NAME),
    sa.Column("body", JSONB, nullable=False),
    sa.Column("role", NAME),
    sa.Column("client_key", sa.String(200)),
    # for event_received rows: pending, then processed / rejected / failed
    sa.Column("status", sa.String(16)),
    sa.Column("outcome", sa.String(32)),
    sa.Column("detail", sa.Text),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("processed_at", sa.Double),
    sa.UniqueConstraint("execution_id", "client_key"),
    sa.Index(None, "status", "execution_id"),
    sa.ForeignKeyConstraint(*_OF_THE_EXECUTION),
)

outbox = sa.Table(
    "lf_outbox",
    metadata,
    sa.Column("id", BIGINT, primary_key=True, autoincrement=True),
    sa.Column("execution_id", ID, nullable=False),
    sa.Column("tenant", TENANT, nullable=False),
    sa.Column("event_id", ID, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    # when the wake-up was handled: its event decided, nothing left to do for it
    sa.Column("published_at", sa.Double),
    # when an outbox relay last sent it through a broker transport (not the fast path)
    sa.Column("relayed_at", sa.Double),
    # only unhandled wake-ups are ever searched: keep the indexes to them
    sa.Index(
        "ix_lf_outbox_unhandled_id",
        "id",
        postgresql_where=sa.text("published_at IS NULL"),
        sqlite_where=sa.text("published_at IS NULL"),
    ),
    sa.Index(
        "ix_lf_outbox_unhandled_execution_id",
        "execution_id",
        postgresql_where=sa.text("published_at IS NULL"),
        sqlite_where=sa.text("published_at IS NULL"),
    ),
    sa.Index(None, "event_id"),
    sa.ForeignKeyConstraint(*_OF_THE_EXECUTION),
)

action_results = sa.Table(
    "lf_action_results",
    metadata,
    sa.Column("key", sa.String(300), primary_key=True),
    sa.Column("tenant", TENANT, nullable=False),
    sa.Column("execution_id", ID, nullable=False),
    sa.Column("event_id", ID, nullable=False),
    sa.Column("step_id", NAME, nullable=False),
    sa.Column("action", NAME, nullable=False),
    sa.Column("result", JSONB),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Index(None, "tenant", "execution_id"),
    sa.ForeignKeyConstraint(*_OF_THE_EXECUTION),
)

leases = sa.Table(
    "lf_leases",
    metadata,
    sa.Column("execution_id", ID, primary_key=True),
    sa.Column("owner", sa.String(200), nullable=False),
    # the fencing token: grows by one at every take-over, checked at every commit
    sa.Column("token", BIGINT, nullable=False),
    sa.Column("expires_at", sa.Double, nullable=False),
    # whose execution: per-tenant limits count the live leases of a tenant
    sa.Column("tenant", TENANT),
    sa.Index("ix_lf_leases_tenant_expires_at", "tenant", "expires_at"),
)

snapshots = sa.Table(
    "lf_snapshots",
    metadata,
    sa.Column("execution_id", ID, primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("tenant", TENANT, nullable=False),
    sa.Column("state", JSONB, nullable=False),
)

circuit_breakers = sa.Table(
    "lf_circuit_breakers",
    metadata,
    # one row per action with a breaker that has failed at least once; no row means closed
    sa.Column("action", NAME, primary_key=True),
    # closed, open or half_open
    sa.Column("state", sa.String(16), nullable=False),
    # consecutive failures, across every worker
    sa.Column("failures", sa.Integer, nullable=False),
    # when the circuit opened, or (half_open) when its trial call was admitted: reset_after
    # counts from here
    sa.Column("opened_at", sa.Double),
    sa.Column("last_error", sa.Text),
    sa.Column("updated_at", sa.Double, nullable=False),
)

dead_letters = sa.Table(
    "lf_dead_letters",
    metadata,
    sa.Column("id", ID, primary_key=True),
    # what the message said, where it parsed (a malformed message has none of the three)
    sa.Column("tenant", TENANT),
    sa.Column("execution_id", ID),
    sa.Column("event_id", ID),
    sa.Column("transport", sa.String(50), nullable=False),
    # the message's id among the transport's own dead letters
    sa.Column("transport_id", sa.String(200), nullable=False),
    sa.Column("message", JSONB, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("deliveries", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("retried_at", sa.Double),
    sa.Column("discarded_at", sa.Double),
    # the audit of its settling: who retried or discarded it, and why
    sa.Column("settled_by", sa.String(200)),
    sa.Column("settle_reason", sa.Text),
    sa.Index(None, "created_at"),
)

workers = sa.Table(
    "lf_workers",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("host", sa.String(200), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("version", sa.String(50), nullable=False),
    sa.Column("broker", sa.String(50), nullable=False),
    sa.Column("concurrency", sa.Integer, nullable=False),
    sa.Column("started_at", sa.Double, nullable=False),
    sa.Column("last_beat", sa.Double, nullable=False),
    sa.Column("stopped_at", sa.Double),
    sa.Column("in_flight", sa.Integer, nullable=False),
    sa.Column("executions", sa.Integer, nullable=False),
    sa.Column("events", sa.Integer, nullable=False),
    sa.Column("errors", sa.Integer, nullable=False),
)

timers = sa.Table(
    "lf_timers",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("tenant", TENANT, nullable=False),
    sa.Column("execution_id", ID, nullable=False),
    # the event the timer appends when it fires (a transition's ``on``)
    sa.Column("event", NAME, nullable=False),
    sa.Column("due_at", sa.Double, nullable=False),
    # the ledger record that armed it: the transition into the state (1: the start)
    sa.Column("armed_seq", sa.Integer, nullable=False),
    # armed, then fired or cancelled
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("fired_at", sa.Double),
    sa.Column("cancelled_at", sa.Double),
    sa.Column("fired_event_id", ID),
    # "state": armed by entering a state, cancelled on leaving it; "step": scheduled by a
    # step, cancelled only when the execution completes
    sa.Column("kind", sa.String(16), nullable=False, server_default="state"),
    # the payload of the event a step scheduled (state timers' events have none)
    sa.Column("payload", JSONB),
    # only armed timers are ever searched, by due time (workers) or by execution (cancelling)
    sa.Index(
        "ix_lf_timers_armed_due_at",
        "due_at",
        postgresql_where=sa.text("state = 'armed'"),
        sqlite_where=sa.text("state = 'armed'"),
    ),
    sa.Index(None, "execution_id", "state"),
    sa.ForeignKeyConstraint(*_OF_THE_EXECUTION),
)

confined_roles = sa.Table(
    "lf_confined_roles",
    metadata,
    # a PostgreSQL login role that runs database actions: for its sessions the tenant wall
    # honours only a tenant the engine sealed, never "*" (see ledgerflow.store.confine_role)
    sa.Column("role", NAME, primary_key=True),
    sa.Column("confined_at", sa.Double, nullable=False),
)

wall_secret = sa.Table(
    "lf_wall_secret",
    metadata,
    # the key of the seals the engine puts on a confined session's tenant: readable by the
    # ledger's owner alone (PostgreSQL; unused on SQLite)
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("secret", sa.String(200), nullable=False),
)
