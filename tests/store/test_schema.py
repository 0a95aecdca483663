"""The Alembic revisions build exactly the tables schema.py declares, on both databases, and a
database at an older revision upgrades in place."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from ledgerflow.breakers import BreakerPolicy, CircuitBreakers
from ledgerflow.errors import SchemaError
from ledgerflow.store import ALL_TENANTS, schema
from ledgerflow.store.schema import metadata
from ledgerflow.store.sql import SQLStore


def test_the_migrated_schema_matches_the_declared_tables(db_url: str) -> None:
    store = SQLStore(db_url)  # db_url comes upgraded by the revisions
    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": "lf_schema_version"})
        differences = [
            d
            for d in compare_metadata(context, metadata)
            if not any(app in str(d) for app in ("hits", "app_", "invoices", "payments"))
        ]
    store.close()
    assert differences == []


def _migrate(store: SQLStore, revision: str, *, down: bool = False) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(schema.__file__).with_name("migrations")))
    with store.engine.connect() as conn:
        config.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(config, revision)
        conn.commit()


def test_a_database_at_0001_upgrades_to_the_circuit_breakers_and_keeps_its_rows(
    tmp_path: Path,
) -> None:
    store = SQLStore(f"sqlite:///{tmp_path}/old.db")
    _migrate(store, "0001")
    assert store.revision() == "0001"
    with pytest.raises(SchemaError, match="needs revision 0006"):
        store.check_schema()
    with store.write(tenant=ALL_TENANTS) as conn:
        store.insert_definition(conn, "W", 1, {"name": "W"}, "h")
    assert store.upgrade() == "0006"
    store.check_schema()
    assert store.definition_body("W", 1) == {"name": "W"}
    CircuitBreakers(store).failure("a", BreakerPolicy(), "boom")
    assert store.row_counts()["lf_circuit_breakers"] == 1
    _migrate(store, "0001", down=True)
    assert store.revision() == "0001"
    with store.read(tenant=ALL_TENANTS) as conn:
        assert not sa.inspect(conn).has_table("lf_circuit_breakers")
        assert not sa.inspect(conn).has_table("lf_dead_letters")
        assert "relayed_at" not in {c["name"] for c in sa.inspect(conn).get_columns("lf_outbox")}
    store.close()


def test_a_database_at_0003_upgrades_to_the_timers_and_back(tmp_path: Path) -> None:
    store = SQLStore(f"sqlite:///{tmp_path}/old.db")
    _migrate(store, "0003")
    with store.write(tenant=ALL_TENANTS) as conn:
        store.insert_definition(conn, "W", 1, {"name": "W"}, "h")
    assert store.upgrade() == "0006"
    assert store.row_counts()["lf_timers"] == 0
    assert store.definition_body("W", 1) == {"name": "W"}
    _migrate(store, "0003", down=True)
    with store.read(tenant=ALL_TENANTS) as conn:
        assert not sa.inspect(conn).has_table("lf_timers")
    store.close()
