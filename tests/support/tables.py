"""Ledgers for tests whose database actions write a table of their own."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import sqlalchemy as sa


@contextlib.contextmanager
def ledger_with_own_table(db_url: str, table: sa.Table) -> Iterator[str]:
    """An in-memory SQLite ledger for ``db_url`` on SQLite, else the PostgreSQL test database,
    given back without ``table`` (the ledger's schema checks see every table of it)."""
    if db_url.startswith("sqlite"):
        yield "sqlite://"
        return
    yield db_url
    engine = sa.create_engine(db_url)
    try:
        table.drop(engine, checkfirst=True)
    finally:
        engine.dispose()
