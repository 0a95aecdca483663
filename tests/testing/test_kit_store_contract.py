"""ledgerflow's own stores against the store contract a plugin's store must pass too: an
SQLite file, SQLite in memory, and PostgreSQL (a schema of its own per test)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from ledgerflow.store.sql import SQLStore, normalise_url
from ledgerflow.testing import Clock
from ledgerflow.testing.contracts import StoreContract
from ledgerflow.testing.harness import _memory_store


class TestSQLiteFileStore(StoreContract):
    @pytest.fixture(autouse=True)
    def directory(self, tmp_path: Path) -> None:
        self.path = tmp_path / "contract.db"

    def make_store(self, clock: Clock) -> SQLStore:
        store = SQLStore(f"sqlite:///{self.path}", clock=clock)
        store.upgrade()
        return store


class TestSQLiteMemoryStore(StoreContract):
    """The harness's own in-memory stores (the schema copied from a migrated template)."""

    def make_store(self, clock: Clock) -> SQLStore:
        return _memory_store("sqlite://", clock, 100)


class TestPostgreSQLStore(StoreContract):
    @pytest.fixture(autouse=True)
    def schema(self, pg_url: str) -> Iterator[None]:
        base = sa.make_url(normalise_url(pg_url))
        name = f"lf_contract_{uuid.uuid4().hex[:10]}"
        admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{name}"')
        self.url = base.update_query_dict({"options": f"-csearch_path={name}"}).render_as_string(
            hide_password=False
        )
        yield
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{name}" CASCADE')
        admin.dispose()

    def make_store(self, clock: Clock) -> SQLStore:
        store = SQLStore(self.url, clock=clock)
        store.upgrade()
        return store
