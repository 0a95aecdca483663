"""Fixtures of the battery: a private PostgreSQL cluster for the whole run (the scenarios flood
and restart it; the shared server is never touched), a fresh database on it for each scenario,
a private Redis for each, an engine with the chaos app set up, and a fleet of worker processes
stopped at the end. Missing server programs fail the tests; they never skip."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ledgerflow_redis.testing import RedisServer

import invoice_app
from apps import chaos_app
from chaos.battery import Fleet
from chaos.servers import PrivatePostgres
from ledgerflow.engine import Engine
from ledgerflow.store import confine_role
from ledgerflow.store.sql import SQLStore

BROKER = {"streams": 4, "claim_idle": 1, "claim_every": 0.5, "max_deliveries": 50}
"""The broker URL's settings: take over a dead worker's messages after a second; dead-letter
a message only after many deliveries (kills make many)."""


@pytest.fixture(scope="session")
def private_pg() -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster of the battery's own."""
    with PrivatePostgres() as server:
        yield server


@pytest.fixture
def chaos_db(private_pg: PrivatePostgres, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new database on the private cluster, with ledgerflow's schema and the chaos app's
    tables, reached as a role that row-level security applies to; every engine and worker of
    the scenario runs database actions as a second, confined role (``LEDGERFLOW_ACTION_DB``)."""
    url, action_url = private_pg.create_database()
    store = SQLStore(url)
    store.upgrade()
    store.close()
    engine = Engine(url)
    try:
        chaos_app.setup(engine)
        role = action_url.split("://", 1)[1].split("@", 1)[0]
        with engine.store.write() as conn:
            confine_role(
                conn,
                role,
                tables=[*chaos_app.metadata.sorted_tables, *invoice_app.metadata.sorted_tables],
            )
    finally:
        engine.close()
    monkeypatch.setenv("LEDGERFLOW_ACTION_DB", action_url)
    return url


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A Redis of the scenario's own, without persistence."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def broker_url(redis_server: RedisServer) -> str:
    """The private Redis as the workers' broker."""
    return redis_server.url(**BROKER)


@pytest.fixture
def chaos(chaos_db: str, broker_url: str) -> Iterator[Engine]:
    """The clients' engine: the chaos app set up, wake-ups published to the private Redis."""
    engine = Engine(chaos_db, broker=broker_url, snapshot_every=5)
    chaos_app.setup(engine)
    yield engine
    engine.close()


@pytest.fixture
def fleet(chaos_db: str, broker_url: str, tmp_path: Path) -> Iterator[Fleet]:
    """No worker yet; every worker started is stopped at the end."""
    workers = Fleet(chaos_db, broker_url, tmp_path)
    yield workers
    workers.close()
