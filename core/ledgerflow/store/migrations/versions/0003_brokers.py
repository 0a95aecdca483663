"""Broker transports: the outbox relay's mark, dead letters, worker heartbeats.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

JSONB = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("lf_outbox") as batch:
        batch.add_column(sa.Column("relayed_at", sa.Double))
    op.create_table(
        "lf_dead_letters",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(200)),
        sa.Column("execution_id", sa.String(64)),
        sa.Column("event_id", sa.String(64)),
        sa.Column("transport", sa.String(50), nullable=False),
        sa.Column("transport_id", sa.String(200), nullable=False),
        sa.Column("message", JSONB, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("deliveries", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("retried_at", sa.Double),
        sa.Column("discarded_at", sa.Double),
        sa.PrimaryKeyConstraint("id", name="pk_lf_dead_letters"),
    )
    op.create_index("ix_lf_dead_letters_created_at", "lf_dead_letters", ["created_at"])
    op.create_table(
        "lf_workers",
        sa.Column("id", sa.String(200), nullable=False),
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
        sa.PrimaryKeyConstraint("id", name="pk_lf_workers"),
    )


def downgrade() -> None:
    op.drop_table("lf_workers")
    op.drop_index("ix_lf_dead_letters_created_at", "lf_dead_letters")
    op.drop_table("lf_dead_letters")
    with op.batch_alter_table("lf_outbox") as batch:
        batch.drop_column("relayed_at")
