"""Where ledgers live: the SQL store for SQLite (embedded, the default) and PostgreSQL."""

from ledgerflow.store.sql import (
    ALL_TENANTS,
    NOTIFY_CHANNEL,
    SQLStore,
    StoredRecord,
    confine_role,
    confinement_prerequisites,
    current_tenant_scope,
    normalise_url,
    tenant_scope,
    tenant_wall,
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
