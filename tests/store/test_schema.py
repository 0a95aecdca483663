"""The Alembic revisions build exactly the tables schema.py declares, on both databases, and a
database at an older revision upgrades in place."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from ledgerflow.breakers import BreakerPolicy, CircuitBreakers
from ledgerflow.errors import SchemaError
from ledgerflow.store import ALL_TENANTS, schema, tenant_wall
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


PG_ADMIN = os.environ.get("LEDGERFLOW_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def test_postgresql_goes_to_0005_and_back_with_its_walls(pg_url: str) -> None:
    """On a database of its own (owned by the session's role): down to 0005 is refused while
    an application table carries the 0006 wall, then works once it is dropped, and back up the
    walls, keys and foreign keys are in place again."""
    role = pg_url.split("://", 1)[1].split("@", 1)[0]
    name = f"{role}_mig"
    server = PG_ADMIN.rsplit("/", 1)[0]
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" OWNER "{role}"')
    store = SQLStore(pg_url.rsplit("/", 1)[0] + f"/{name}")
    try:
        store.upgrade()
        with store.write() as conn:
            conn.exec_driver_sql("CREATE TABLE notes (tenant text)")
            assert tenant_wall(conn, "notes") is True
        with pytest.raises(RuntimeError, match="notes"):
            _migrate(store, "0005", down=True)
        assert store.revision() == "0006"
        with store.write() as conn:
            conn.exec_driver_sql("DROP POLICY ledgerflow_tenant_wall ON notes")
        _migrate(store, "0005", down=True)
        assert store.revision() == "0005"
        with store.read() as conn:
            assert not sa.inspect(conn).has_table("lf_wall_secret")
        assert store.upgrade() == "0006"
        with store.write() as conn:
            assert tenant_wall(conn, "notes") is True
            keys = conn.exec_driver_sql("SELECT count(*) FROM lf_wall_secret").scalar_one()
            fks = conn.exec_driver_sql(
                "SELECT count(*) FROM pg_constraint WHERE contype = 'f' "
                "AND confrelid = 'lf_executions'::regclass"
            ).scalar_one()
        assert (keys, fks) == (1, 4)
    finally:
        store.close()
        with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
