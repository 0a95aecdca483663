"""The first schema: definitions, executions, the ledger, outbox, action results, leases,
snapshots.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSONB = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "lf_definitions",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("body", JSONB, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("registered_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("name", "version", name="pk_lf_definitions"),
    )
    op.create_table(
        "lf_executions",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(200), nullable=False),
        sa.Column("workflow", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("state", sa.String(200), nullable=False),
        sa.Column("context", JSONB, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("projection_seq", sa.Integer, nullable=False),
        sa.Column("decided_seq", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_lf_executions"),
    )
    op.create_index(
        "ix_lf_executions_tenant_workflow_status", "lf_executions", ["tenant", "workflow", "status"]
    )
    op.create_table(
        "lf_events",
        sa.Column("execution_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200)),
        sa.Column("body", JSONB, nullable=False),
        sa.Column("role", sa.String(200)),
        sa.Column("client_key", sa.String(200)),
        sa.Column("status", sa.String(16)),
        sa.Column("outcome", sa.String(32)),
        sa.Column("detail", sa.Text),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("processed_at", sa.Double),
        sa.PrimaryKeyConstraint("execution_id", "seq", name="pk_lf_events"),
        sa.UniqueConstraint("event_id", name="uq_lf_events_event_id"),
        sa.UniqueConstraint(
            "execution_id", "client_key", name="uq_lf_events_execution_id_client_key"
        ),
    )
    op.create_index("ix_lf_events_status_execution_id", "lf_events", ["status", "execution_id"])
    op.create_table(
        "lf_outbox",
        sa.Column("id", BIGINT, nullable=False, autoincrement=True),
        sa.Column("execution_id", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(200), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("published_at", sa.Double),
        sa.PrimaryKeyConstraint("id", name="pk_lf_outbox"),
    )
    unhandled = sa.text("published_at IS NULL")
    op.create_index(
        "ix_lf_outbox_unhandled_id",
        "lf_outbox",
        ["id"],
        postgresql_where=unhandled,
        sqlite_where=unhandled,
    )
    op.create_index(
        "ix_lf_outbox_unhandled_execution_id",
        "lf_outbox",
        ["execution_id"],
        postgresql_where=unhandled,
        sqlite_where=unhandled,
    )
    op.create_index("ix_lf_outbox_event_id", "lf_outbox", ["event_id"])
    op.create_table(
        "lf_action_results",
        sa.Column("key", sa.String(300), nullable=False),
        sa.Column("tenant", sa.String(200), nullable=False),
        sa.Column("execution_id", sa.String(64), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("step_id", sa.String(200), nullable=False),
        sa.Column("action", sa.String(200), nullable=False),
        sa.Column("result", JSONB),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_lf_action_results"),
    )
    op.create_index(
        "ix_lf_action_results_tenant_execution_id", "lf_action_results", ["tenant", "execution_id"]
    )
    op.create_table(
        "lf_leases",
        sa.Column("execution_id", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("token", BIGINT, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("execution_id", name="pk_lf_leases"),
    )
    op.create_table(
        "lf_snapshots",
        sa.Column("execution_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("tenant", sa.String(200), nullable=False),
        sa.Column("state", JSONB, nullable=False),
        sa.PrimaryKeyConstraint("execution_id", "seq", name="pk_lf_snapshots"),
    )


def downgrade() -> None:
    for table in (
        "lf_snapshots",
        "lf_leases",
        "lf_action_results",
        "lf_outbox",
        "lf_events",
        "lf_executions",
        "lf_definitions",
    ):
        op.drop_table(table)
