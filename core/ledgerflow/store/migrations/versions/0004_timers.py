"""Timers: a transition's ``after``, armed when its source state is entered.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lf_timers",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(200), nullable=False),
        sa.Column("execution_id", sa.String(64), nullable=False),
        sa.Column("event", sa.String(200), nullable=False),
        sa.Column("due_at", sa.Double, nullable=False),
        sa.Column("armed_seq", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("fired_at", sa.Double),
        sa.Column("cancelled_at", sa.Double),
        sa.Column("fired_event_id", sa.String(64)),
        sa.PrimaryKeyConstraint("id", name="pk_lf_timers"),
    )
    op.create_index(
        "ix_lf_timers_armed_due_at",
        "lf_timers",
        ["due_at"],
        postgresql_where=sa.text("state = 'armed'"),
        sqlite_where=sa.text("state = 'armed'"),
    )
    op.create_index("ix_lf_timers_execution_id_state", "lf_timers", ["execution_id", "state"])


def downgrade() -> None:
    op.drop_index("ix_lf_timers_execution_id_state", "lf_timers")
    op.drop_index("ix_lf_timers_armed_due_at", "lf_timers")
    op.drop_table("lf_timers")
