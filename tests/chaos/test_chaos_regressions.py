"""Regressions: the bugs the battery found, each pinned by a small deterministic test (on SQLite,
no server needed)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from apps import chaos_app
from ledgerflow.cli import cli
from ledgerflow.engine import Engine
from ledgerflow.errors import InvalidInputError
from ledgerflow.worker import Worker


@pytest.fixture
def local(tmp_path: Path) -> Iterator[Engine]:
    """An engine on an SQLite file with the chaos app set up."""
    engine = Engine(f"sqlite:///{tmp_path}/ledger.db")
    engine.store.upgrade()
    chaos_app.setup(engine)
    yield engine
    engine.close()


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": [value]}
    return value


@pytest.mark.parametrize("payload", [[1, 2], "text", 3, math.nan, _nested(5000)])
def test_a_payload_that_is_not_a_json_object_is_refused_with_a_typed_error(
    local: Engine, payload: Any
) -> None:
    """It raised TypeError, ValueError or RecursionError from inside enqueue_event."""
    execution_id = local.create_execution("Chaos", tenant="acme")
    before = local.store.row_counts()
    with pytest.raises(InvalidInputError, match="payload"):
        local.enqueue_event(execution_id, "Hit", tenant="acme", payload=payload)
    assert local.store.row_counts() == before


@pytest.mark.parametrize(
    ("lease_ttl", "poll_interval"), [(math.nan, 1.0), (1.0, math.nan), (math.inf, 1.0)]
)
def test_a_worker_refuses_a_lease_or_poll_interval_that_is_not_finite(
    local: Engine, lease_ttl: float, poll_interval: float
) -> None:
    """NaN passed the ``<= 0`` check: a lease expiring at NaN never expires in PostgreSQL."""
    with pytest.raises(ValueError, match="finite"):
        Worker(local, lease_ttl=lease_ttl, poll_interval=poll_interval)


@pytest.mark.parametrize("option", ["--lease-ttl", "--poll-interval"])
def test_ledgerflow_worker_refuses_nan_with_one_line(local: Engine, option: str) -> None:
    """click's float ranges let ``nan`` through; the worker then ran with it."""
    result = CliRunner().invoke(cli, ["--db", local.store.url, "worker", option, "nan"])
    assert result.exit_code == 2
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.output.strip().splitlines() == [
        "error: lease_ttl and poll_interval must be positive and finite"
    ]


def test_the_command_line_closes_its_engine(local: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in-process (``ledgerflow.cli.main`` from Python), each command left its engine and
    its database connections open (pytest reported them as unclosed resources)."""
    closed: list[Engine] = []
    close = Engine.close

    def counting_close(self: Engine) -> None:
        closed.append(self)
        close(self)

    monkeypatch.setattr(Engine, "close", counting_close)
    for n in range(1, 4):
        result = CliRunner().invoke(cli, ["--db", local.store.url, "workflow", "list"])
        assert result.exit_code == 0, result.output
        assert len(closed) == n
