"""Every validation rule has a failing example, and its message is checked."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

import ledgerflow
from ledgerflow import DefinitionError, definitions

BASE: dict[str, Any] = {
    "name": "Order",
    "version": 1,
    "initial_state": "new",
    "states": ["new", "paid", "shipped", "cancelled"],
    "terminal_states": ["shipped", "cancelled"],
    "events": {"Pay": {"payload": {"type": "object", "required": ["amount"]}}},
    "transitions": [
        {
            "name": "pay",
            "from": "new",
            "to": "paid",
            "on": "Pay",
            "condition": "payload.amount > 0",
        },
        {
            "name": "ship",
            "from": "paid",
            "to": "shipped",
            "on": "Ship",
            "roles": ["warehouse"],
            "steps": [
                {"id": "pick", "action": "wms.pick"},
                {"id": "label", "action": "wms.label", "depends_on": ["pick"]},
            ],
        },
        {"name": "cancel", "from": "*", "to": "cancelled", "on": "Cancel", "after": "30d"},
    ],
}

Mutation = Callable[[dict[str, Any]], None]


def problems_of(mutate: Mutation) -> list[str]:
    data = copy.deepcopy(BASE)
    mutate(data)
    with pytest.raises(DefinitionError) as info:
        definitions.compile_workflow(
            definitions.parse(data, source="order.yaml"), source="order.yaml"
        )
    messages = [str(p) for p in info.value.problems]
    assert str(info.value) == "\n".join(messages)
    return messages


def step(data: dict[str, Any], transition: int, index: int) -> dict[str, Any]:
    result: dict[str, Any] = data["transitions"][transition]["steps"][index]
    return result


def test_the_base_definition_is_valid() -> None:
    definition = definitions.compile_workflow(definitions.parse(BASE))
    assert definition.name == "Order"


CASES: list[tuple[str, Mutation, str]] = [
    ("empty name", lambda d: d.update(name=" "), "order.yaml: name: the workflow needs a name"),
    (
        "version zero",
        lambda d: d.update(version=0),
        "version: version must be a positive integer, got 0",
    ),
    (
        "no states",
        lambda d: d.update(states=[], terminal_states=[], transitions=[]),
        "states: the workflow declares no states",
    ),
    (
        "duplicate state",
        lambda d: d["states"].append("paid"),
        "states: state 'paid' is declared twice",
    ),
    (
        "bad state name",
        lambda d: d["states"].append("in transit"),
        "state name 'in transit' must be an identifier",
    ),
    (
        "unknown initial",
        lambda d: d.update(initial_state="draft"),
        "initial_state: unknown state 'draft'",
    ),
    (
        "unknown terminal",
        lambda d: d["terminal_states"].append("lost"),
        "terminal_states: unknown state 'lost'",
    ),
    (
        "terminal initial",
        lambda d: d["terminal_states"].append("new"),
        "initial_state: the initial state 'new' is terminal",
    ),
    (
        "unknown source",
        lambda d: d["transitions"][0].update({"from": "nowhere"}),
        "transitions[0] (pay): unknown source state 'nowhere'",
    ),
    (
        "unknown target",
        lambda d: d["transitions"][0].update(to="limbo"),
        "transitions[0] (pay): unknown target state 'limbo'",
    ),
    (
        "empty source list",
        lambda d: d["transitions"][0].update({"from": []}),
        "transitions[0] (pay): 'from' names no state",
    ),
    (
        "any mixed with names",
        lambda d: d["transitions"][2].update({"from": ["*", "new"]}),
        "'from' mixes '*' with named states",
    ),
    (
        "leaves terminal",
        lambda d: d["transitions"].append({"from": "shipped", "to": "paid", "on": "Reopen"}),
        "transitions[3] (Reopen): leaves terminal state 'shipped'",
    ),
    (
        "bad event name",
        lambda d: d["transitions"][1].update(on="1st"),
        "event name '1st' must start with a letter or _",
    ),
    (
        "duplicate transition name",
        lambda d: d["transitions"][2].update(name="pay"),
        "transitions[2] (pay): transition name 'pay' is used twice",
    ),
    (
        "ambiguous",
        lambda d: d["transitions"].append(
            {"from": "new", "to": "cancelled", "on": "Pay", "condition": "payload.amount > 0"}
        ),
        "transitions[3] (Pay): ambiguous with transitions[0] (pay): both fire on 'Pay' from 'new'",
    ),
    (
        "unreachable",
        lambda d: d["states"].append("archived") or d["terminal_states"].append("archived"),
        "states: state 'archived' cannot be reached from 'new'",
    ),
    (
        "no way out",
        lambda d: (
            d["transitions"][1].update({"from": "new"})
            or d["transitions"][2].update({"from": "new"})
        ),
        "states: non-terminal state 'paid' has no transition out of it",
    ),
    (
        "condition syntax",
        lambda d: d["transitions"][0].update(condition="payload.amount >"),
        "transitions[0] (pay) condition: ",
    ),
    (
        "set expression syntax",
        lambda d: d["transitions"][0].update(set={"paid": {"expr": "payload.("}}),
        "transitions[0] (pay) set.paid: ",
    ),
    (
        "parameter expression syntax",
        lambda d: step(d, 1, 0).update(params={"sku": {"expr": "1 +"}}),
        "transitions[1] (ship) steps[0] (pick) params.sku: ",
    ),
    (
        "bad duration",
        lambda d: d["transitions"][2].update(after="2 months"),
        "transitions[2] (cancel) after: bad duration '2 months'",
    ),
    (
        "duplicate step id",
        lambda d: step(d, 1, 1).update(id="pick", depends_on=[]),
        "transitions[1] (ship) steps[1] (pick): step id 'pick' is used twice",
    ),
    (
        "bad step id",
        lambda d: step(d, 1, 0).update(id="pick-it"),
        "step id 'pick-it' must be an identifier",
    ),
    (
        "unknown dependency",
        lambda d: step(d, 1, 1).update(depends_on=["pack"]),
        "transitions[1] (ship) steps[1] (label): depends_on names unknown step 'pack'",
    ),
    (
        "self dependency",
        lambda d: step(d, 1, 0).update(depends_on=["pick"]),
        "steps[0] (pick): a step cannot depend on itself",
    ),
    (
        "dependency cycle",
        lambda d: step(d, 1, 0).update(depends_on=["label"]),
        "transitions[1] (ship): step dependency cycle: pick -> label -> pick",
    ),
    (
        "empty action",
        lambda d: step(d, 1, 0).update(action=""),
        "steps[0] (pick): the step names no action",
    ),
    (
        "zero attempts",
        lambda d: step(d, 1, 0).update(on_error={"strategy": "retry", "attempts": 0}),
        "steps[0] (pick) on_error: attempts must be at least 1, got 0",
    ),
    (
        "attempts without retry",
        lambda d: step(d, 1, 0).update(on_error={"strategy": "stop", "attempts": 3}),
        "attempts is only meaningful with strategy 'retry', not 'stop'",
    ),
    (
        "bad backoff",
        lambda d: step(d, 1, 0).update(
            on_error={"strategy": "retry", "attempts": 2, "backoff": {"initial": 5, "maximum": 1}}
        ),
        "on_error.backoff: maximum is smaller than initial",
    ),
    (
        "backoff multiplier",
        lambda d: step(d, 1, 0).update(
            on_error={"strategy": "retry", "attempts": 2, "backoff": {"multiplier": 0.5}}
        ),
        "multiplier must be at least 1, got 0.5",
    ),
    (
        "compensation without action",
        lambda d: step(d, 1, 0).update(compensate={"action": " "}),
        "steps[0] (pick) compensate: the compensation names no action",
    ),
    (
        "compensation expression",
        lambda d: step(d, 1, 0).update(
            compensate={"action": "wms.unpick", "params": {"x": {"expr": "]"}}}
        ),
        "steps[0] (pick) compensate.params.x: ",
    ),
    (
        "unused event",
        lambda d: d["events"].update(Refund={}),
        "events.Refund: event 'Refund' is declared but no transition handles it",
    ),
    (
        "bad payload schema",
        lambda d: d["events"]["Pay"].update(payload={"type": "banana"}),
        "events.Pay.payload: not a valid JSON Schema",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "expected"), [(m, e) for _, m, e in CASES], ids=[c[0] for c in CASES]
)
def test_each_rule_reports_its_problem_with_its_location(mutate: Mutation, expected: str) -> None:
    messages = problems_of(mutate)
    assert any(expected in message for message in messages), messages
    assert all(message.startswith("order.yaml: ") for message in messages)


def test_every_problem_is_reported_at_once() -> None:
    def many(d: dict[str, Any]) -> None:
        d["transitions"][0].update(to="limbo", condition="payload.amount >")
        step(d, 1, 1).update(depends_on=["pack"])
        d["transitions"][2].update(after="soon")

    messages = problems_of(many)
    assert len(messages) >= 4
    assert any("unknown target state 'limbo'" in m for m in messages)
    assert any("condition" in m for m in messages)
    assert any("unknown step 'pack'" in m for m in messages)
    assert any("bad duration 'soon'" in m for m in messages)


def test_unknown_actions_are_reported_against_a_registry() -> None:
    workflow = definitions.parse(BASE)
    assert definitions.validate(workflow, actions={"wms.pick", "wms.label"}) == []
    problems = definitions.validate(workflow, actions={"wms.pick"}, source="order.yaml")
    assert [str(p) for p in problems] == [
        "order.yaml: transitions[1] (ship) steps[1] (label): unknown action 'wms.label'"
    ]


def test_roles_or_conditions_tell_transitions_apart() -> None:
    data = copy.deepcopy(BASE)
    data["transitions"] += [
        {"from": "paid", "to": "shipped", "on": "Ship", "roles": ["courier"]},
        {"from": "new", "to": "cancelled", "on": "Pay", "condition": "payload.amount <= 0"},
    ]
    ledgerflow.compile_workflow(definitions.parse(data))


STRUCTURE_CASES: list[tuple[str, Mutation, str]] = [
    (
        "typo in a key",
        lambda d: d["transitions"][0].update(conditon="true"),
        "extra fields found (conditon)",
    ),
    (
        "version as text",
        lambda d: d.update(version="1"),
        "version: invalid value for type, expected int",
    ),
    ("version as boolean", lambda d: d.update(version=True), "version"),
    (
        "missing target",
        lambda d: d["transitions"][0].pop("to"),
        "transitions[0].to: required field missing",
    ),
    (
        "unknown strategy",
        lambda d: step(d, 1, 0).update(on_error={"strategy": "ignore"}),
        "strategy",
    ),
    ("states not a list", lambda d: d.update(states=5), "states"),
    ("params not a mapping", lambda d: step(d, 1, 0).update(params=[1]), "params"),
]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [(m, e) for _, m, e in STRUCTURE_CASES],
    ids=[c[0] for c in STRUCTURE_CASES],
)
def test_malformed_definitions_name_each_bad_field(mutate: Mutation, expected: str) -> None:
    data = copy.deepcopy(BASE)
    mutate(data)
    with pytest.raises(DefinitionError) as info:
        definitions.parse(data, source="order.yaml")
    messages = [str(p) for p in info.value.problems]
    assert any(expected in m for m in messages), messages
    assert all(m.startswith("order.yaml: ") for m in messages)


def test_a_definition_must_be_a_mapping() -> None:
    with pytest.raises(DefinitionError, match="must be a mapping at its top level"):
        definitions.parse(["not", "a", "mapping"])


@pytest.mark.parametrize(
    ("suffix", "text", "expected"),
    [
        (".yaml", "name: [unclosed", "not valid yaml"),
        (".json", "{", "not valid json"),
        (".toml", "name = ", "not valid toml"),
        (".txt", "", "unknown file type"),
    ],
)
def test_unreadable_files_get_one_clear_problem(
    tmp_path: Any, suffix: str, text: str, expected: str
) -> None:
    path = tmp_path / f"broken{suffix}"
    path.write_text(text)
    with pytest.raises(DefinitionError, match=expected) as info:
        ledgerflow.load(path)
    assert str(info.value).startswith(str(path))


def test_a_missing_file_is_a_definition_error(tmp_path: Any) -> None:
    with pytest.raises(DefinitionError, match="No such file"):
        ledgerflow.load(tmp_path / "absent.yaml")
