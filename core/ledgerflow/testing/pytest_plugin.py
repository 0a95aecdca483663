"""ledgerflow's pytest plugin: fixtures for testing workflows, loaded by pytest itself
(entry point ``pytest11``) wherever ledgerflow is installed.

Fixtures:

- ``ledgerflow_harness``: a :class:`~ledgerflow.testing.Harness` on a fresh store, with the
  definitions, actions and setup of the three fixtures below, closed after the test;
- ``ledgerflow_engine``: that harness's :class:`~ledgerflow.engine.Engine`;
- ``ledgerflow_definitions`` (default: none), ``ledgerflow_actions`` (default: none) and
  ``ledgerflow_setup`` (default: none): override them in your ``conftest.py`` to give every
  harness your workflows (definitions, workflows or file paths), your
  :class:`~ledgerflow.registry.ActionRegistry`, and your app's ``setup(engine)``;
- ``ledgerflow_db_url``: the store URL of the test.

The option ``--ledgerflow-db URL`` chooses the database: ``sqlite://`` (the default) is a
fresh in-memory SQLite database per test; ``sqlite:///…`` any file name: a fresh SQLite file
per test, in the test's temporary directory (the name given is not used); a PostgreSQL URL: a
fresh schema per test in that database, dropped after the test; any other URL (a store
plugin's) is used as it is by every test. The same tests then run on
PostgreSQL unchanged: ``pytest --ledgerflow-db postgresql://postgres@127.0.0.1/postgres``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import sqlalchemy as sa

from ledgerflow.engine import Engine
from ledgerflow.registry import ActionRegistry
from ledgerflow.store.sql import normalise_url
from ledgerflow.testing.harness import DefinitionSource, Harness

OPTION = "--ledgerflow-db"


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--ledgerflow-db URL``."""
    group = parser.getgroup("ledgerflow")
    group.addoption(
        OPTION,
        action="store",
        default="sqlite://",
        metavar="URL",
        help=(
            "the database of the ledgerflow_harness and ledgerflow_engine fixtures: sqlite:// "
            "(default, in memory), sqlite:///any.db (a file per test) or a PostgreSQL URL "
            "(a schema per test); any other URL is used as it is"
        ),
    )


@pytest.fixture
def ledgerflow_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The store URL of this test, made fresh from ``--ledgerflow-db``."""
    url: str = request.config.getoption(OPTION)
    if url in ("sqlite://", "sqlite:///:memory:"):
        yield url
    elif url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path}/ledgerflow.db"
    elif url.startswith(("postgresql", "postgres")):
        with _SchemaOfItsOwn(url) as scoped:
            yield scoped
    else:
        yield url  # a store plugin's: used as it is, by every test


class _SchemaOfItsOwn:
    """A PostgreSQL schema created for one test and dropped after it."""

    def __init__(self, url: str) -> None:
        self.base = sa.make_url(normalise_url(url))
        self.schema = f"lf_test_{uuid.uuid4().hex[:12]}"
        self.admin = sa.create_engine(self.base, isolation_level="AUTOCOMMIT")

    def __enter__(self) -> str:
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{self.schema}"')
        scoped = self.base.update_query_dict({"options": f"-csearch_path={self.schema}"})
        return scoped.render_as_string(hide_password=False)

    def __exit__(self, *exc: object) -> None:
        try:
            with self.admin.connect() as conn:
                conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        finally:
            self.admin.dispose()


@pytest.fixture
def ledgerflow_definitions() -> Sequence[DefinitionSource]:
    """The definitions every ``ledgerflow_harness`` registers: override in ``conftest.py``."""
    return ()


@pytest.fixture
def ledgerflow_actions() -> ActionRegistry | None:
    """The actions every ``ledgerflow_harness`` adds: override in ``conftest.py``."""
    return None


@pytest.fixture
def ledgerflow_setup() -> Callable[[Engine], object] | None:
    """The ``setup(engine)`` every ``ledgerflow_harness`` calls: override in ``conftest.py``."""
    return None


@pytest.fixture
def ledgerflow_harness(
    ledgerflow_db_url: str,
    ledgerflow_definitions: Sequence[DefinitionSource],
    ledgerflow_actions: ActionRegistry | None,
    ledgerflow_setup: Callable[[Engine], object] | None,
) -> Iterator[Harness]:
    """A :class:`~ledgerflow.testing.Harness` on this test's store, closed afterwards."""
    harness = Harness(
        *ledgerflow_definitions,
        url=ledgerflow_db_url,
        actions=ledgerflow_actions,
        setup=ledgerflow_setup,
    )
    try:
        yield harness
    finally:
        harness.close()


@pytest.fixture
def ledgerflow_engine(ledgerflow_harness: Harness) -> Engine:
    """The engine of this test's ``ledgerflow_harness`` (restarting the harness replaces it:
    use ``ledgerflow_harness.engine`` after a restart)."""
    return ledgerflow_harness.engine
