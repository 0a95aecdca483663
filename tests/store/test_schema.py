"""The Alembic revisions build exactly the tables schema.py declares, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from ledgerflow.store.schema import metadata
from ledgerflow.store.sql import SQLStore


def test_the_migrated_schema_matches_the_declared_tables(db_url: str) -> None:
    store = SQLStore(db_url)  # db_url comes upgraded by the revisions
    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": "lf_schema_version"})
        differences = [
            d
            for d in compare_metadata(context, metadata)
            if "hits" not in str(d) and "app_" not in str(d)
        ]
    store.close()
    assert differences == []
