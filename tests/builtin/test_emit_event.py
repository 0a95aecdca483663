"""ledgerflow.emit_event: steps append events to executions of their tenant, exactly once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ledgerflow import definitions
from ledgerflow.engine import Engine
from ledgerflow.worker import Worker

WORKFLOW: dict[str, Any] = {
    "name": "Relay",
    "version": 1,
    "initial_state": "idle",
    "states": ["idle", "sent", "pinged", "done"],
    "terminal_states": ["done"],
    "events": {"Ping": {"payload": {"type": "object", "required": ["n"]}}},
    "transitions": [
        {
            "from": "idle",
            "to": "sent",
            "on": "Send",
            "steps": [
                {
                    "id": "emit",
                    "action": "ledgerflow.emit_event",
                    "params": {
                        "event": {"expr": "payload.event"},
                        "payload": {"expr": "payload.body"},
                        "execution_id": {"expr": "payload.to"},
                    },
                }
            ],
        },
        {"from": "idle", "to": "pinged", "on": "Ping", "roles": ["nobody"]},
        {"from": "sent", "to": "done", "on": "Ping", "roles": ["nobody"]},
        {"from": ["pinged", "sent"], "to": "done", "on": "Stop"},
    ],
}


@pytest.fixture
def relay(db_url: str) -> Iterator[Engine]:
    engine = Engine(db_url)
    engine.register(definitions.compile_workflow(definitions.parse(WORKFLOW)))
    yield engine
    engine.close()


def drain(engine: Engine) -> None:
    Worker(engine, poll_interval=0.01).run_once()


def test_a_step_sends_an_event_to_another_execution_once(relay: Engine) -> None:
    sender = relay.create_execution("Relay", tenant="acme")
    receiver = relay.create_execution("Relay", tenant="acme")
    relay.enqueue_event(
        sender, "Send", tenant="acme", payload={"event": "Ping", "body": {"n": 1}, "to": receiver}
    )
    drain(relay)
    assert relay.get_execution(sender, tenant="acme").state == "sent"
    # system events are trusted: the role list of the transition does not apply
    assert relay.get_execution(receiver, tenant="acme").state == "pinged"
    received = [h for h in relay.history(receiver, tenant="acme") if h.kind == "event_received"]
    assert [(h.record.name, h.record.origin) for h in received] == [("Ping", "system")]  # type: ignore[union-attr]


def test_a_step_sends_an_event_to_its_own_execution(relay: Engine) -> None:
    execution_id = relay.create_execution("Relay", tenant="acme")
    relay.enqueue_event(
        execution_id, "Send", tenant="acme", payload={"event": "Ping", "body": {"n": 2}, "to": ""}
    )
    drain(relay)
    assert relay.get_execution(execution_id, tenant="acme").state == "done"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"event": "Nope", "body": {}}, "has no event 'Nope'"),
        ({"event": "Ping", "body": {}}, "'n' is a required property"),
        ({"event": "Ping", "body": {"n": 1}, "to": "OTHER"}, "not found"),
    ],
)
def test_a_bad_emit_fails_the_step_and_appends_nothing(
    relay: Engine, body: dict[str, Any], message: str
) -> None:
    other = relay.create_execution("Relay", tenant="globex")
    sender = relay.create_execution("Relay", tenant="acme")
    payload = {**body, "to": other if body.get("to") == "OTHER" else ""}
    relay.enqueue_event(sender, "Send", tenant="acme", payload=payload)
    drain(relay)
    failed = [h for h in relay.history(sender, tenant="acme") if h.kind == "step_failed"]
    assert message in failed[0].record.error  # type: ignore[union-attr]
    assert len(relay.history(other, tenant="globex")) == 1
    assert [h.kind for h in relay.history(sender, tenant="acme")].count("event_received") == 1
