"""Confined roles: the PostgreSQL login roles that run database actions. For their sessions the
tenant wall honours only a tenant the engine sealed (a hash keyed by a secret only the ledger's
owner can read, bound to the backend), never ``*``; SQL in an action's transaction can change
the setting, not forge the seal. The rows of an execution now name it with its tenant (a
foreign key), so no row can pair one tenant with another's execution. A confined session checks
its step's lease through a function, without reading the leases.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import secrets

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

# the rows that belong to an execution, tied to it with their tenant
OF_AN_EXECUTION = ("lf_events", "lf_outbox", "lf_action_results", "lf_timers")

OLD_POLICY = (
    "tenant = current_setting('ledgerflow.tenant', true) "
    "OR current_setting('ledgerflow.tenant', true) = '*'"
)


def _policy(schema: str, column: str = "tenant") -> str:
    """The wall on ``column``: the tenant lf_wall_tenant() vouches for, or every row for "*"
    (which it never returns for a confined session); each call an InitPlan, run once."""
    wall = f'(SELECT "{schema}".lf_wall_tenant())'
    return f"{column} = {wall} OR {wall} = '*'"


def upgrade() -> None:
    op.create_table(
        "lf_confined_roles",
        sa.Column("role", sa.String(200), nullable=False),
        sa.Column("confined_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("role", name="pk_lf_confined_roles"),
    )
    op.create_table(
        "lf_wall_secret",
        sa.Column("id", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("secret", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_lf_wall_secret"),
    )
    with op.batch_alter_table("lf_executions") as batch:
        batch.create_unique_constraint("uq_lf_executions_id_tenant", ["id", "tenant"])
    for table in OF_AN_EXECUTION:
        with op.batch_alter_table(table) as batch:
            batch.create_foreign_key(
                f"fk_{table}_lf_executions",
                "lf_executions",
                ["execution_id", "tenant"],
                ["id", "tenant"],
            )
    if op.get_bind().dialect.name != "postgresql":
        return
    schema = op.get_bind().execute(sa.text("SELECT current_schema()")).scalar_one()
    op.execute("REVOKE ALL ON lf_wall_secret FROM PUBLIC")
    op.get_bind().execute(
        sa.text("INSERT INTO lf_wall_secret (id, secret) VALUES (1, :secret)"),
        {"secret": secrets.token_hex(32)},
    )
    # every role's policies read the list (the names of confined roles are no secret)
    op.execute("GRANT SELECT ON lf_confined_roles TO PUBLIC")
    # the tenant this session's transaction may act for: the setting as it stands for a role
    # that is not confined; for a confined one, only if the seal (a keyed hash of the tenant
    # and this backend) matches, and never "*"
    op.execute(
        f'CREATE FUNCTION "{schema}".lf_wall_tenant() RETURNS text LANGUAGE sql STABLE '
        "SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$ "
        "SELECT CASE "
        f'WHEN NOT EXISTS (SELECT 1 FROM "{schema}".lf_confined_roles c '
        "WHERE c.role = session_user::text) THEN current_setting('ledgerflow.tenant', true) "
        "WHEN coalesce(current_setting('ledgerflow.tenant', true), '') IN ('', '*') THEN NULL "
        "WHEN current_setting('ledgerflow.tenant_seal', true) = ("
        "SELECT encode(sha256(convert_to(s.secret || ':' || "
        "current_setting('ledgerflow.tenant', true) || ':' || pg_backend_pid()::text || ':' "
        f"|| s.secret, 'UTF8')), 'hex') FROM \"{schema}\".lf_wall_secret s WHERE s.id = 1) "
        "THEN current_setting('ledgerflow.tenant', true) END $$"
    )
    for table in TENANT_TABLES:
        rule = _policy(schema)
        op.execute(
            f"ALTER POLICY ledgerflow_tenant_wall ON {table} USING ({rule}) WITH CHECK ({rule})"
        )
    # a step's fencing check, for a confined session that may not read lf_leases: runs as the
    # owner of the ledger, share-locks the lease row as the direct query does, and answers
    # only for an execution of the tenant the session acts for
    op.execute(
        f'CREATE FUNCTION "{schema}".lf_check_lease(p_execution_id text, p_owner text, '
        "p_token bigint) RETURNS boolean LANGUAGE sql SECURITY DEFINER "
        "SET search_path = pg_catalog, pg_temp AS $$ "
        f'SELECT true FROM "{schema}".lf_leases l WHERE l.execution_id = p_execution_id '
        "AND l.owner = p_owner AND l.token = p_token AND EXISTS ("
        f'SELECT 1 FROM "{schema}".lf_executions e WHERE e.id = l.execution_id '
        f'AND e.tenant = "{schema}".lf_wall_tenant()) FOR SHARE OF l $$'
    )
    op.execute(f'REVOKE ALL ON FUNCTION "{schema}".lf_check_lease(text, text, bigint) FROM PUBLIC')


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        others = [
            f"{r.schemaname}.{r.tablename}"
            for r in bind.execute(
                sa.text(
                    "SELECT schemaname, tablename FROM pg_policies "
                    "WHERE policyname = 'ledgerflow_tenant_wall' "
                    "AND coalesce(qual, '') LIKE '%lf_wall_tenant%' "
                    "AND NOT (tablename = ANY(:ledger))"
                ),
                {"ledger": list(TENANT_TABLES)},
            )
        ]
        if others:
            # dropping the function would take their walls with it: refuse, say what to do
            raise RuntimeError(
                "cannot go below schema revision 0006 while application tables carry its "
                f"tenant wall: {', '.join(sorted(others))}; drop their policy "
                "ledgerflow_tenant_wall first (and put it back with tenant_wall after)"
            )
        for table in TENANT_TABLES:
            op.execute(
                f"ALTER POLICY ledgerflow_tenant_wall ON {table} "
                f"USING ({OLD_POLICY}) WITH CHECK ({OLD_POLICY})"
            )
        op.execute("DROP FUNCTION IF EXISTS lf_check_lease(text, text, bigint)")
        op.execute("DROP FUNCTION IF EXISTS lf_wall_tenant()")
    for table in OF_AN_EXECUTION:
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(f"fk_{table}_lf_executions", type_="foreignkey")
    with op.batch_alter_table("lf_executions") as batch:
        batch.drop_constraint("uq_lf_executions_id_tenant", type_="unique")
    op.drop_table("lf_wall_secret")
    op.drop_table("lf_confined_roles")
