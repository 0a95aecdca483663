"""The serverless handler: a function trigger's wake-ups, or a cron job's sweep."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ledgerflow import serverless
from ledgerflow.engine import Engine
from ledgerflow.errors import InvalidInputError

TENANT = "acme"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def deployed(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    """A store with the counting app's workflow, and the handler configured for it."""
    monkeypatch.setenv("LEDGERFLOW_DB", db_url)
    monkeypatch.setenv("LEDGERFLOW_APP", "apps.counting_app")
    monkeypatch.setattr(serverless, "_engine", None)
    engine = Engine(db_url)
    engine.store.upgrade()
    from apps import counting_app

    counting_app.setup(engine)
    yield engine
    if serverless._engine is not None:
        serverless._engine.close()
    engine.close()


def test_the_handler_processes_the_wakeups_it_is_given(deployed: Engine) -> None:
    first = deployed.create_execution("Counting", tenant=TENANT)
    second = deployed.create_execution("Counting", tenant=TENANT)
    a = deployed.enqueue_event(first, "Hit", tenant=TENANT, payload={"n": 1})
    deployed.enqueue_event(first, "Hit", tenant=TENANT, payload={"n": 2})
    b = deployed.enqueue_event(second, "Hit", tenant=TENANT, payload={"n": 3})
    summary = serverless.handler(
        {"wakeups": [{"execution_id": first, "tenant": TENANT, "event_id": a}]}, None
    )
    assert summary == {"processed_events": 2, "executions": 1, "left": []}
    assert deployed.event_status(b, tenant=TENANT).status == "pending"  # not given: not touched
    # the same wake-up again (a redelivery) changes nothing
    again = serverless.handler(
        {"wakeups": [{"execution_id": first, "tenant": TENANT, "event_id": a}]}, None
    )
    assert again["processed_events"] == 0
    # a cron job's pass: no wake-ups, a sweep
    swept = serverless.handler(None, None)
    assert swept["processed_events"] == 1
    assert deployed.event_status(b, tenant=TENANT).status == "processed"


def test_an_execution_held_by_a_worker_is_left_to_it(deployed: Engine) -> None:
    execution_id = deployed.create_execution("Counting", tenant=TENANT)
    deployed.enqueue_event(execution_id, "Hit", tenant=TENANT, payload={"n": 1})
    assert deployed.store.take_lease(execution_id, "long-lived-worker", 30) is not None
    summary = serverless.handler(
        {"wakeups": [{"execution_id": execution_id, "tenant": TENANT}]}, None
    )
    assert summary == {"processed_events": 0, "executions": 0, "left": [execution_id]}


@pytest.mark.parametrize(
    ("event", "problem"),
    [
        ("not an object", "must be a JSON object"),
        ({"wakeups": "x"}, "wakeups must be a list"),
        ({"wakeups": [7]}, r"wakeups\[0\] must be an object"),
        ({"wakeups": [{"tenant": TENANT}]}, r"wakeups\[0\].execution_id"),
        ({"wakeups": [{"execution_id": "e", "tenant": ""}]}, r"wakeups\[0\].tenant"),
        ({"wakeups": [{"execution_id": "e", "tenant": "t", "event_id": 3}]}, "event_id"),
    ],
)
def test_a_malformed_trigger_is_refused_with_its_fault(event: object, problem: str) -> None:
    with pytest.raises(InvalidInputError, match=problem):
        serverless.parse_wakeups(event)  # type: ignore[arg-type]
