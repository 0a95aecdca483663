"""Confined roles: the PostgreSQL login roles that run database actions, for whose sessions the
tenant wall never lifts, and the lease check such a session may make without reading the
leases table.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TENANT_TABLES = (
    "lf_executions",
    "lf_events",
    "lf_outbox",
    "lf_action_results",
    "lf_snapshots",
    "lf_dead_letters",
    "lf_timers",
)

OLD_POLICY = (
    "tenant = current_setting('ledgerflow.tenant', true) "
    "OR current_setting('ledgerflow.tenant', true) = '*'"
)

# "*" (every tenant) is honoured only for a session whose login role is not confined: SQL in a
# database action's transaction can set ledgerflow.tenant, but not change its session's role
POLICY = (
    "tenant = current_setting('ledgerflow.tenant', true) "
    "OR (current_setting('ledgerflow.tenant', true) = '*' "
    "AND NOT EXISTS (SELECT 1 FROM lf_confined_roles c WHERE c.role = session_user::text))"
)


def upgrade() -> None:
    op.create_table(
        "lf_confined_roles",
        sa.Column("role", sa.String(200), nullable=False),
        sa.Column("confined_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("role", name="pk_lf_confined_roles"),
    )
    if op.get_bind().dialect.name != "postgresql":
        return
    # every role's policies read the list (the names of confined roles are no secret)
    op.execute("GRANT SELECT ON lf_confined_roles TO PUBLIC")
    for table in TENANT_TABLES:
        op.execute(
            f"ALTER POLICY ledgerflow_tenant_wall ON {table} USING ({POLICY}) WITH CHECK ({POLICY})"
        )
    schema = op.get_bind().execute(sa.text("SELECT current_schema()")).scalar_one()
    # a step's fencing check, for a confined session that may not read lf_leases: runs as the
    # owner of the ledger, share-locks the lease row as the direct query does
    op.execute(
        f'CREATE FUNCTION "{schema}".lf_check_lease(p_execution_id text, p_owner text, '
        "p_token bigint) RETURNS boolean LANGUAGE sql SECURITY DEFINER "
        "SET search_path = pg_catalog, pg_temp AS $$ "
        f'SELECT true FROM "{schema}".lf_leases WHERE execution_id = p_execution_id '
        "AND owner = p_owner AND token = p_token FOR SHARE $$"
    )
    op.execute(f'REVOKE ALL ON FUNCTION "{schema}".lf_check_lease(text, text, bigint) FROM PUBLIC')


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS lf_check_lease(text, text, bigint)")
        for table in TENANT_TABLES:
            op.execute(
                f"ALTER POLICY ledgerflow_tenant_wall ON {table} "
                f"USING ({OLD_POLICY}) WITH CHECK ({OLD_POLICY})"
            )
    op.drop_table("lf_confined_roles")
