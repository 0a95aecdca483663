"""A connection the server cuts in the middle of a transaction is a StoreUnavailableError that
says so, not a driver error, and the next transaction gets a fresh connection."""

from __future__ import annotations

import contextlib
import os

import psycopg
import pytest
import sqlalchemy as sa

from ledgerflow.errors import StoreUnavailableError
from ledgerflow.store import ALL_TENANTS
from ledgerflow.store.sql import SQLStore

PG_ADMIN = os.environ.get("LEDGERFLOW_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _cut_mid_transaction(store: SQLStore, url: str) -> None:
    """Open a transaction, have the server end its backend (as a restart or an administrator
    would), then go on using it."""
    with store.read(tenant=ALL_TENANTS) as conn:
        pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        # as the administrator: the ledger's database keeps this from ordinary roles
        with psycopg.connect(PG_ADMIN, autocommit=True) as other:
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


@pytest.mark.parametrize("transaction", ["read", "write", "action_write"])
def test_pooled_connections_the_server_dropped_are_replaced_without_an_error(
    pg_url: str, pg_action_url: str, transaction: str
) -> None:
    """No ping at checkout: after a restart (here, every idle backend of the pool ended) the
    first statement of the next transaction finds its connection dead and the store takes a
    new one, before anything of the caller's was sent."""
    from ledgerflow.store import confine_role

    store = SQLStore(pg_url, action_url=pg_action_url)
    try:
        with store.write() as conn:
            confine_role(conn, pg_action_url.split("://", 1)[1].split("@", 1)[0])

        def begin() -> contextlib.AbstractContextManager[sa.Connection]:
            if transaction == "read":
                return store.read(tenant="acme")
            if transaction == "write":
                return store.write(tenant="acme")
            return store.action_write("READ COMMITTED", tenant="acme")

        pids = set()
        for _ in range(3):
            with begin() as conn:
                pids.add(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())
        # as the administrator: the confined role's backends are not the test role's to end
        with psycopg.connect(PG_ADMIN, autocommit=True) as other:
            for pid in pids:
                other.execute("SELECT pg_terminate_backend(%s)", (pid,))
        for _ in range(3):
            with begin() as conn:
                fresh = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
                assert fresh not in pids
                assert (
                    conn.execute(
                        sa.text("SELECT current_setting('ledgerflow.tenant')")
                    ).scalar_one()
                    == "acme"
                )
    finally:
        store.close()


@pytest.mark.parametrize("transaction", ["read", "action_write"])
def test_every_pooled_connection_dropped_by_a_restart_is_replaced(
    pg_url: str, transaction: str
) -> None:
    """After a restart the pool holds several dead connections: the first one found dead
    must retire them all (as SQLAlchemy does for its own statements), so the next
    transaction does not take the next dead one and fail."""
    store = SQLStore(pg_url)
    try:

        def begin() -> contextlib.AbstractContextManager[sa.Connection]:
            if transaction == "read":
                return store.read(tenant="acme")
            return store.action_write("READ COMMITTED", tenant="acme")

        pids = []
        with contextlib.ExitStack() as stack:
            for _ in range(4):  # four at once: four connections in the pool
                conn = stack.enter_context(begin())
                pids.append(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())
        assert len(set(pids)) == 4
        with psycopg.connect(PG_ADMIN, autocommit=True) as other:
            for pid in pids:
                other.execute("SELECT pg_terminate_backend(%s)", (pid,))
        for _ in range(4):
            with begin() as conn:
                assert conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one() not in pids
    finally:
        store.close()
