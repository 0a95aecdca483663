"""A connection the server cuts in the middle of a transaction is a StoreUnavailableError that
says so, not a driver error, and the next transaction gets a fresh connection."""

from __future__ import annotations

import psycopg
import pytest
import sqlalchemy as sa

from ledgerflow.errors import StoreUnavailableError
from ledgerflow.store import ALL_TENANTS
from ledgerflow.store.sql import SQLStore


def _cut_mid_transaction(store: SQLStore, url: str) -> None:
    """Open a transaction, have the server end its backend (as a restart or an administrator
    would), then go on using it."""
    with store.read(tenant=ALL_TENANTS) as conn:
        pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        with psycopg.connect(url, autocommit=True) as other:
            other.execute("SELECT pg_terminate_backend(%s)", (pid,))
        conn.execute(sa.text("SELECT 1"))


def test_a_connection_cut_mid_transaction_is_a_store_error(pg_url: str) -> None:
    store = SQLStore(pg_url)
    try:
        with pytest.raises(StoreUnavailableError, match="lost the connection to the database"):
            _cut_mid_transaction(store, pg_url)
        with store.read(tenant=ALL_TENANTS) as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
    finally:
        store.close()
