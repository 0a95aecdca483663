"""Circuit breakers: one row of shared state per action that has a breaker.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lf_circuit_breakers",
        sa.Column("action", sa.String(200), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("opened_at", sa.Double),
        sa.Column("last_error", sa.Text),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("action", name="pk_lf_circuit_breakers"),
    )


def downgrade() -> None:
    op.drop_table("lf_circuit_breakers")
