"""Regressions: the bugs the battery found, each pinned by a small deterministic test (on SQLite,
or on the private PostgreSQL and Redis where the bug needs them)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from ledgerflow_redis.testing import RedisServer
from ledgerflow_redis.transport import RedisTransport

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


@pytest.mark.parametrize(
    "fields",
    [
        {b"\x00": b""},
        {b"v": b"1", b"execution_id": b"x\x00", b"tenant": b"acme", b"event_id": b"e"},
    ],
)
def test_a_message_holding_nul_is_dead_lettered_on_postgresql(
    chaos_db: str, redis_server: RedisServer, fields: dict[bytes, bytes]
) -> None:
    """PostgreSQL refuses NUL in JSON and in text: recording such a message as a dead letter
    (or taking a lease for an execution id holding NUL) failed, so it was never acknowledged
    and came back for ever, each time sending the worker into its database backoff."""
    url = redis_server.url(streams=1, claim_idle=0.2, claim_every=0.1, max_deliveries=2)
    engine = Engine(chaos_db, broker=url)
    chaos_app.setup(engine)
    worker = Worker(engine, broker=url, poll_interval=0.05)
    transport = RedisTransport(url)
    try:
        with redis_server.client() as client:
            client.xadd(transport.streams[0], fields)
        deadline = time.monotonic() + 30
        while not engine.store.dead_letter_rows():
            assert time.monotonic() < deadline, "never dead-lettered"
            worker.run_once()
        (letter,) = engine.store.dead_letter_rows()
        assert letter.reason.startswith("malformed message")
        assert "\x00" not in json.dumps(letter.message)
        assert not redis_server.pending(transport.streams[0])
    finally:
        transport.close()
        engine.close()
