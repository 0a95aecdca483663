"""An execution row for tests that run steps straight through a runner: the rows a step writes
(its action's result) belong to an execution of their tenant, which must exist."""

from __future__ import annotations

import sqlalchemy as sa

from ledgerflow.store.schema import executions
from ledgerflow.store.sql import SQLStore


def ensure_execution(store: SQLStore, execution_id: str, tenant: str, workflow: str = "W") -> None:
    """Insert a bare execution ``execution_id`` of ``tenant`` unless it is there already."""
    with store.write(tenant=tenant) as conn:
        found = conn.execute(
            sa.select(executions.c.id).where(executions.c.id == execution_id)
        ).first()
        if found is None:
            conn.execute(
                executions.insert().values(
                    id=execution_id,
                    tenant=tenant,
                    workflow=workflow,
                    version=1,
                    state="a",
                    context={},
                    status="active",
                    projection_seq=1,
                    decided_seq=1,
                    created_at=0.0,
                    updated_at=0.0,
                )
            )
