"""Hypothesis strategies derived from a workflow definition.

Every strategy here draws values the definition itself describes: event names it knows,
payloads satisfying the JSON Schema it declares for each event, the roles its transitions
permit, sequences of such events, clock advances around its timers' durations, and faults to
inject while an event is processed. Override what a schema cannot say (a payload that must
match a database row, say) with ``payloads={"Event": strategy}``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jsonschema
from hypothesis import strategies as st

from ledgerflow import durations
from ledgerflow.definitions import Definition
from ledgerflow.model import JSON, Event
from ledgerflow.testing.harness import (
    ClientRetry,
    Crash,
    Fault,
    LeaseExpires,
    Redelivery,
    StepFault,
    WorkerRestart,
)

__all__ = [
    "MAX_SAFE_INTEGER",
    "clock_advances",
    "crashes",
    "event_sequences",
    "events",
    "faults",
    "from_schema",
    "json_values",
    "payloads",
    "roles",
]

MAX_SAFE_INTEGER = 2**53 - 1
"""Numbers are drawn within ±this (I-JSON's safe range, which every JSON reader keeps exact)."""

_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)


def json_values(*, max_leaves: int = 6) -> st.SearchStrategy[JSON]:
    """Any JSON value: null, booleans, safe numbers, short strings, and lists and objects of
    them (no NUL characters: no database ledgerflow supports can store them in text)."""
    scalars: st.SearchStrategy[JSON] = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER),
        _floats(None, None, False, False),
        _TEXT,
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(_TEXT, inner, max_size=3)
        ),
        max_leaves=max_leaves,
    )


def _floats(
    low: float | None, high: float | None, exclude_low: bool, exclude_high: bool
) -> st.SearchStrategy[float]:
    return st.floats(
        min_value=-float(MAX_SAFE_INTEGER) if low is None else low,
        max_value=float(MAX_SAFE_INTEGER) if high is None else high,
        exclude_min=exclude_low and low is not None,
        exclude_max=exclude_high and high is not None,
        allow_nan=False,
        allow_infinity=False,
        allow_subnormal=False,
    )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _bounds(schema: Mapping[str, Any]) -> tuple[float | None, float | None, bool, bool]:
    low, high = schema.get("minimum"), schema.get("maximum")
    exclude_low = exclude_high = False
    exclusive_low, exclusive_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if _is_number(exclusive_low) and (low is None or exclusive_low >= low):
        low, exclude_low = exclusive_low, True
    if _is_number(exclusive_high) and (high is None or exclusive_high <= high):
        high, exclude_high = exclusive_high, True
    return low, high, exclude_low, exclude_high


def _integers(schema: Mapping[str, Any]) -> st.SearchStrategy[int]:
    low, high, exclude_low, exclude_high = _bounds(schema)
    lowest = -MAX_SAFE_INTEGER
    if low is not None:
        lowest = math.floor(low) + 1 if exclude_low else math.ceil(low)
    highest = MAX_SAFE_INTEGER
    if high is not None:
        highest = math.ceil(high) - 1 if exclude_high else math.floor(high)
    lowest, highest = max(lowest, -MAX_SAFE_INTEGER), min(highest, MAX_SAFE_INTEGER)
    if lowest > highest:
        return st.nothing()
    return st.integers(lowest, highest)


def _numbers(schema: Mapping[str, Any]) -> st.SearchStrategy[JSON]:
    low, high, exclude_low, exclude_high = _bounds(schema)
    # whole numbers first: they shrink further and read better in a counterexample
    return st.one_of(_integers(schema), _floats(low, high, exclude_low, exclude_high))


def _strings(schema: Mapping[str, Any]) -> st.SearchStrategy[str]:
    low = int(schema.get("minLength", 0))
    high = schema.get("maxLength")
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        return st.from_regex(pattern).filter(lambda s: "\x00" not in s)
    return st.text(
        st.characters(codec="utf-8", exclude_characters="\x00"),
        min_size=low,
        max_size=int(high) if high is not None else max(low, 0) + 12,
    )


def _objects(schema: Mapping[str, Any]) -> st.SearchStrategy[JSON]:
    properties: Mapping[str, Any] = schema.get("properties", {})
    required = [name for name in schema.get("required", []) if isinstance(name, str)]
    fixed = {name: _strategy(properties.get(name, {})) for name in required}
    optional = {name: _strategy(sub) for name, sub in properties.items() if name not in fixed}
    extra = schema.get("additionalProperties", True)
    base = st.fixed_dictionaries(fixed, optional=optional)
    if extra is False or properties:
        # undeclared keys only make a counterexample harder to read; a schema that refuses
        # them, or that names the keys it cares about, gets none
        return base
    values = json_values() if extra is True else _strategy(extra)
    return st.builds(
        lambda known, more: {**more, **known},
        base,
        st.dictionaries(_TEXT, values, max_size=2),
    )


def _arrays(schema: Mapping[str, Any]) -> st.SearchStrategy[JSON]:
    low = int(schema.get("minItems", 0))
    high = schema.get("maxItems")
    prefix = schema.get("prefixItems")
    items = schema.get("items", {})
    if isinstance(items, list):  # draft 4-7 tuples
        prefix, items = items, schema.get("additionalItems", {})
    rest = _strategy(items if isinstance(items, Mapping) else {})
    size = int(high) if high is not None else max(low, len(prefix or ())) + 3
    if prefix:
        head = st.tuples(*(_strategy(sub) for sub in prefix)).map(list)
        more = max(size - len(prefix), 0)
        tail = st.lists(rest, max_size=more) if items is not False else st.just([])
        return st.builds(lambda h, t: [*h, *t], head, tail)
    return st.lists(
        rest,
        min_size=low,
        max_size=size,
        unique_by=_canonical if schema.get("uniqueItems") else None,
    )


def _canonical(value: JSON) -> str:
    return json.dumps(value, sort_keys=True)


_BY_TYPE: dict[str, Callable[[Mapping[str, Any]], st.SearchStrategy[Any]]] = {
    "null": lambda _: st.none(),
    "boolean": lambda _: st.booleans(),
    "integer": _integers,
    "number": _numbers,
    "string": _strings,
    "object": _objects,
    "array": _arrays,
}


def _strategy(schema: Any) -> st.SearchStrategy[JSON]:
    """A strategy for instances of ``schema``, close enough that :func:`from_schema`'s final
    filter rarely refuses one."""
    if schema is True or schema == {}:
        return json_values()
    if schema is False:
        return st.nothing()
    if not isinstance(schema, Mapping):
        return json_values()
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(list(schema["enum"]))
    for key in ("anyOf", "oneOf"):
        if key in schema:
            rest = {k: v for k, v in schema.items() if k != key}
            return st.one_of([_strategy({**rest, **sub}) for sub in schema[key]])
    if "allOf" in schema:
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for sub in schema["allOf"]:
            merged.update(sub)
        return _strategy(merged)
    kind = schema.get("type")
    if kind is None:
        kind = _implied_type(schema)
    if isinstance(kind, list):
        return st.one_of([_strategy({**schema, "type": k}) for k in kind])
    if isinstance(kind, str) and kind in _BY_TYPE:
        return _BY_TYPE[kind](schema)
    return json_values()


def _implied_type(schema: Mapping[str, Any]) -> str | None:
    if {"properties", "required", "additionalProperties"} & schema.keys():
        return "object"
    if {"items", "prefixItems", "minItems", "maxItems"} & schema.keys():
        return "array"
    if {"minLength", "maxLength", "pattern"} & schema.keys():
        return "string"
    if {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"} & schema.keys():
        return "number"
    return None


def from_schema(schema: Mapping[str, Any]) -> st.SearchStrategy[JSON]:
    """Instances of the JSON Schema ``schema``: every value drawn satisfies it.

    Types, ``properties`` / ``required`` / ``additionalProperties``, ``items`` /
    ``prefixItems``, lengths and bounds, ``pattern``, ``enum``, ``const`` and
    ``anyOf`` / ``oneOf`` / ``allOf`` shape what is drawn; any other keyword is honoured by
    filtering (so a schema that is mostly such keywords draws slowly: give the strategy
    yourself). Numbers stay within ±:data:`MAX_SAFE_INTEGER`; strings hold no NUL character.
    """
    validator = jsonschema.validators.validator_for(schema)(schema)
    return _strategy(schema).filter(validator.is_valid)


def payloads(
    definition: Definition,
    event: str,
    *,
    overrides: Mapping[str, st.SearchStrategy[Mapping[str, JSON]]] | None = None,
) -> st.SearchStrategy[dict[str, JSON]]:
    """Payloads of ``event`` that its declared schema accepts (``{}`` when it declares none),
    or those of ``overrides[event]`` when given (which must be accepted too)."""
    return _payloads_of(definition, event, overrides)


def _payloads_of(
    definition: Definition,
    event: str,
    overrides: Mapping[str, st.SearchStrategy[Mapping[str, JSON]]] | None,
) -> st.SearchStrategy[dict[str, JSON]]:
    if overrides and event in overrides:
        return overrides[event].map(dict)
    spec = definition.workflow.events.get(event)
    if spec is None or spec.payload is None:
        return st.just({})
    return from_schema(spec.payload).map(_as_payload)


def _as_payload(value: JSON) -> dict[str, JSON]:
    if not isinstance(value, dict):
        raise ValueError(f"a payload schema must describe objects; it allowed {value!r}")
    return value


def _all_roles(definition: Definition) -> list[str]:
    return sorted({role for ct in definition.transitions for role in ct.transition.roles})


def roles(definition: Definition, event: str | None = None) -> st.SearchStrategy[str | None]:
    """A sender's role: half the time one the transitions on ``event`` permit (when they
    restrict roles), otherwise any role the definition names, or none."""
    anyone: st.SearchStrategy[str | None] = st.sampled_from([None, *_all_roles(definition)])
    permitted = sorted(
        {
            role
            for ct in definition.transitions
            if event is None or ct.transition.on == event
            for role in ct.transition.roles
        }
    )
    if not permitted:
        return anyone
    return st.one_of(st.sampled_from(permitted), anyone)


def events(
    definition: Definition,
    *,
    names: Sequence[str] | None = None,
    payloads: Mapping[str, st.SearchStrategy[Mapping[str, JSON]]] | None = None,
) -> st.SearchStrategy[Event]:
    """Events the definition knows (or those in ``names``), each with a payload its schema
    accepts (see :func:`ledgerflow.testing.strategies.payloads`) and a role (see
    :func:`roles`). Whether the event applies in a given state is for the workflow to decide:
    most drawn events are rejected, which is worth testing too."""
    chosen = sorted(names if names is not None else definition.known_events)
    if not chosen:
        raise ValueError(f"{definition.name} knows no events to draw")
    payload_of = {name: _payloads_of(definition, name, payloads) for name in chosen}
    role_of = {name: roles(definition, name) for name in chosen}

    @st.composite
    def event(draw: st.DrawFn) -> Event:
        name = draw(st.sampled_from(chosen))
        return Event(name=name, payload=draw(payload_of[name]), role=draw(role_of[name]))

    return event()


def event_sequences(
    definition: Definition,
    *,
    min_size: int = 0,
    max_size: int = 8,
    payloads: Mapping[str, st.SearchStrategy[Mapping[str, JSON]]] | None = None,
) -> st.SearchStrategy[list[Event]]:
    """Lists of :func:`events`, for tests that drive a whole sequence at once (the
    :func:`~ledgerflow.testing.check_workflow` state machine draws them one at a time)."""
    return st.lists(events(definition, payloads=payloads), min_size=min_size, max_size=max_size)


def clock_advances(
    definition: Definition | None = None, *, max_seconds: float = 7 * 24 * 3600.0
) -> st.SearchStrategy[float]:
    """Seconds to move a :class:`~ledgerflow.testing.Clock` forward: any span up to
    ``max_seconds``, and, for a definition with timers, spans just short of, exactly at and
    just past each timer's duration (where a timer's bugs live)."""
    spans: set[float] = set()
    if definition is not None:
        for ct in definition.transitions:
            if ct.transition.after is not None:
                seconds = durations.parse(ct.transition.after)
                spans |= {max(seconds - 1.0, 0.0), seconds, seconds + 1.0}
    # whole seconds: they shrink cleanly, and a timer's bug is rarely in a fraction
    anything = st.integers(0, int(max_seconds)).map(float)
    if not spans:
        return anything
    return st.one_of(st.sampled_from(sorted(spans)), anything)


def crashes(*, max_call: int = 4) -> st.SearchStrategy[StepFault]:
    """A worker dying before or after the effect of one of the first ``max_call`` action
    calls of a processing, or stalling past its lease after one (see
    :class:`~ledgerflow.testing.Crash` and :class:`~ledgerflow.testing.LeaseExpires`)."""
    call = st.integers(1, max_call)
    return st.one_of(
        st.builds(Crash, point=st.just("before_effect"), call=call),
        st.builds(Crash, point=st.just("after_effect"), call=call),
        st.builds(LeaseExpires, call=call),
    )


def faults(*, max_call: int = 4) -> st.SearchStrategy[Fault | None]:
    """No fault (half the time, and what a counterexample shrinks to), or one of
    :func:`crashes` (when ``max_call`` is above 0: the workflow calls actions), a wake-up
    delivered again, a client's retry with the same key, or a worker restart."""
    others: list[st.SearchStrategy[Fault]] = [
        st.just(Redelivery()),
        st.just(ClientRetry()),
        st.just(WorkerRestart()),
    ]
    if max_call > 0:
        others.insert(0, crashes(max_call=max_call))
    return st.one_of(st.none(), st.one_of(others))
