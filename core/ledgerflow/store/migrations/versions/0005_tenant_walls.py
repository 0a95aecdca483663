"""Tenant walls and scheduled events: row-level security on PostgreSQL, the tenant of each
lease (for per-tenant limits), timers scheduled by steps, and who settled a dead letter and
why.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

JSONB = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

# every table that holds a tenant's rows
TENANT_TABLES = (
    "lf_executions",
    "lf_events",
    "lf_outbox",
    "lf_action_results",
    "lf_snapshots",
    "lf_dead_letters",
    "lf_timers",
)

# the policy: a transaction sees and writes the rows of the tenant it set, or every row when
# it set "*" (work that crosses tenants: claiming, relaying, firing timers); one that set
# nothing sees nothing
POLICY = (
    "tenant = current_setting('ledgerflow.tenant', true) "
    "OR current_setting('ledgerflow.tenant', true) = '*'"
)


def upgrade() -> None:
    with op.batch_alter_table("lf_leases") as batch:
        batch.add_column(sa.Column("tenant", sa.String(200)))
    with op.batch_alter_table("lf_timers") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="state"))
        batch.add_column(sa.Column("payload", JSONB))
    with op.batch_alter_table("lf_dead_letters") as batch:
        batch.add_column(sa.Column("settled_by", sa.String(200)))
        batch.add_column(sa.Column("settle_reason", sa.Text))
    op.create_index("ix_lf_leases_tenant_expires_at", "lf_leases", ["tenant", "expires_at"])
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TENANT_TABLES:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        # the owner too: ledgerflow usually connects as the role that created the tables
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY ledgerflow_tenant_wall ON {table} USING ({POLICY}) "
            f"WITH CHECK ({POLICY})"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in TENANT_TABLES:
            op.execute(f"DROP POLICY IF EXISTS ledgerflow_tenant_wall ON {table}")
            op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
            op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    op.drop_index("ix_lf_leases_tenant_expires_at", "lf_leases")
    with op.batch_alter_table("lf_dead_letters") as batch:
        batch.drop_column("settle_reason")
        batch.drop_column("settled_by")
    with op.batch_alter_table("lf_timers") as batch:
        batch.drop_column("payload")
        batch.drop_column("kind")
    with op.batch_alter_table("lf_leases") as batch:
        batch.drop_column("tenant")
