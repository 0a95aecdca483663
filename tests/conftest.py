"""Shared fixtures: the example definitions shipped in contrib/ (with the InvoiceApproval
example's app module, which creates the tables its steps write), and stores.

Ledger tests run on SQLite and on a real PostgreSQL, reached at ``LEDGERFLOW_TEST_PG`` (default:
the local server on 127.0.0.1:5432, user postgres). When it cannot be reached the PostgreSQL
tests fail; they never skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from hypothesis import settings

import invoice_app
import ledgerflow
from ledgerflow.engine import Engine
from ledgerflow.store import ALL_TENANTS, confinement_prerequisites
from ledgerflow.store.schema import metadata
from ledgerflow.store.sql import SQLStore

ROOT = Path(__file__).resolve().parent.parent
INVOICE_APPROVAL = ROOT / "contrib" / "examples" / "invoice_approval" / "invoice_approval.yaml"


@pytest.fixture(scope="session")
def invoice_path() -> Path:
    """The InvoiceApproval example's YAML file."""
    return INVOICE_APPROVAL


@pytest.fixture(scope="session")
def invoice() -> ledgerflow.Definition:
    """The InvoiceApproval example, loaded and compiled."""
    return ledgerflow.load(INVOICE_APPROVAL)


# No per-example deadline: the machines are shared and a slow example is not a failure (speed
# is measured by the benchmarks). CI runs every property with the same examples, so a red run
# can be replayed exactly; elsewhere hypothesis keeps exploring new ones.
settings.register_profile("ledgerflow", deadline=None)
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "ledgerflow")

PG_ADMIN = os.environ.get("LEDGERFLOW_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end, reached as a
    role of its own that is neither a superuser nor exempt from row-level security (the way
    ledgerflow is meant to be run): every PostgreSQL test runs behind the tenant wall."""
    name = f"ledgerflow_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is required for these tests and is not reachable at {PG_ADMIN}: {exc}"
        )
    with admin:
        admin.execute(f'CREATE ROLE "{name}" LOGIN NOSUPERUSER NOBYPASSRLS')
        # the role database actions run as when a test confines them (pg_action_url)
        admin.execute(f'CREATE ROLE "{name}_actions" LOGIN NOSUPERUSER NOBYPASSRLS')
        admin.execute(f'CREATE DATABASE "{name}" OWNER "{name}"')
    server = PG_ADMIN.rsplit("/", 1)[0].split("://", 1)[1].split("@")[-1]
    url = f"postgresql://{name}@{server}/{name}"
    # what a superuser does once in a ledger's database before confining a role
    with psycopg.connect(f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}", autocommit=True) as admin:
        for statement in confinement_prerequisites():
            admin.execute(statement)
    store = SQLStore(url)
    store.upgrade()
    store.close()
    yield url
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'DROP ROLE IF EXISTS "{name}_actions"')
        admin.execute(f'DROP ROLE IF EXISTS "{name}"')


@pytest.fixture(scope="session")
def pg_action_url(pg_url: str) -> str:
    """The session's PostgreSQL database reached as its second role, made for database actions
    (``action_db``): a test confines it (:func:`ledgerflow.store.confine_role`) after
    emptying the database, which forgets confinements."""
    user, _, rest = pg_url.split("://", 1)[1].partition("@")
    return f"postgresql://{user}_actions@{rest}"


def _truncate(url: str) -> None:
    engine = sa.create_engine(ledgerflow.store.normalise_url(url))
    with engine.begin() as conn:
        names = ", ".join(t.name for t in metadata.sorted_tables)
        conn.exec_driver_sql(f"TRUNCATE {names} RESTART IDENTITY")
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL with an up-to-date, empty schema: an SQLite file, or the session's
    PostgreSQL database emptied."""
    if request.param == "sqlite":
        path = f"sqlite:///{tmp_path}/ledger.db"
        store = SQLStore(path)
        store.upgrade()
        store.close()
        return path
    url: str = request.getfixturevalue("pg_url")
    _truncate(url)
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on ``db_url`` with the InvoiceApproval example set up as its app does it: the
    workflow registered and its ``invoices`` and ``payments`` tables created, and emptied (on
    PostgreSQL they outlive a test)."""
    engine = Engine(db_url, snapshot_every=4)
    invoice_app.setup(engine)
    with engine.store.write(tenant=ALL_TENANTS) as conn:
        for table in reversed(invoice_app.metadata.sorted_tables):
            conn.execute(table.delete())
    yield engine
    engine.close()


@pytest.fixture
def counting(db_url: str) -> Iterator[Engine]:
    """An engine on ``db_url`` with the counting app of tests/apps set up and its hits empty."""
    from apps import counting_app

    engine = Engine(db_url)
    counting_app.setup(engine)
    with engine.store.write(tenant=ALL_TENANTS) as conn:
        conn.execute(counting_app.hits.delete())
    yield engine
    engine.close()
