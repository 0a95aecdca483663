"""Strategies from a definition: every payload drawn passes the event's schema, roles come
from the transitions, clock advances sit around the timers, faults are the kit's."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ledgerflow
from ledgerflow.model import Event
from ledgerflow.testing import Crash, LeaseExpires, strategies
from ledgerflow.testing.harness import ClientRetry, Redelivery, WorkerRestart

SCHEMAS: list[dict[str, Any]] = [
    {
        "type": "object",
        "required": ["n"],
        "properties": {"n": {"type": "integer", "minimum": 3, "maximum": 9}},
    },
    {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    {"type": "string", "pattern": "^[A-Z]{3}$"},
    {"type": "string", "minLength": 2, "maxLength": 4},
    {
        "type": "array",
        "items": {"type": "boolean"},
        "minItems": 1,
        "maxItems": 3,
        "uniqueItems": True,
    },
    {"enum": ["a", 1, None]},
    {"const": {"x": [1]}},
    {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 1}]},
    {"type": ["null", "boolean"]},
    {"type": "object", "additionalProperties": False, "properties": {"a": {"type": "string"}}},
    {
        "type": "object",
        "properties": {"tags": {"type": "array", "prefixItems": [{"type": "string"}]}},
    },
    {"allOf": [{"type": "integer"}, {"minimum": -2, "maximum": 2}]},
    {},
]


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: str(s)[:40])
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_value_drawn_from_a_schema_satisfies_it(
    schema: dict[str, Any], data: st.DataObject
) -> None:
    value = data.draw(strategies.from_schema(schema))
    jsonschema.validate(value, schema)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_events_are_known_with_valid_payloads_and_named_roles(
    invoice: ledgerflow.Definition, data: st.DataObject
) -> None:
    event = data.draw(strategies.events(invoice))
    assert isinstance(event, Event)
    assert event.name in invoice.known_events
    assert invoice.payload_errors(event.name, event.payload) == []
    assert event.role in {None, "clerk", "manager", "director"}


@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_a_payload_strategy_can_be_given(
    invoice: ledgerflow.Definition, data: st.DataObject
) -> None:
    fixed = {"invoice": {"id": "INV-1", "total": 5, "customer_id": "C"}}
    events = data.draw(
        strategies.event_sequences(
            invoice, min_size=1, max_size=3, payloads={"CreateInvoice": st.just(fixed)}
        )
    )
    assert all(e.payload == fixed for e in events if e.name == "CreateInvoice")


def test_roles_prefer_those_the_transitions_permit(invoice: ledgerflow.Definition) -> None:
    @settings(max_examples=50, deadline=None, database=None)
    @given(role=strategies.roles(invoice, "ApproveInvoice"))
    def draw(role: str | None) -> None:
        assert role in {None, "clerk", "manager", "director"}

    draw()


def test_clock_advances_include_the_timers_edges(invoice: ledgerflow.Definition) -> None:
    seen: set[float] = set()

    @settings(max_examples=200, deadline=None, database=None)
    @given(seconds=strategies.clock_advances(invoice))
    def draw(seconds: float) -> None:
        assert 0 <= seconds <= 7 * 24 * 3600
        seen.add(seconds)

    draw()
    assert seen & {48 * 3600 - 1.0, 48 * 3600.0, 48 * 3600 + 1.0}


def test_faults_are_the_kits() -> None:
    kinds: set[type] = set()

    @settings(max_examples=200, deadline=None, database=None)
    @given(fault=strategies.faults(max_call=3))
    def draw(fault: Any) -> None:
        if fault is not None:
            kinds.add(type(fault))
            if isinstance(fault, Crash | LeaseExpires):
                assert 1 <= fault.call <= 3

    draw()
    assert kinds == {Crash, LeaseExpires, Redelivery, ClientRetry, WorkerRestart}
