"""Static checks: traps, literal parameters, dead ends found by bounded exploration, and
actions that are not registered."""

from __future__ import annotations

from typing import Any

import pytest

import ledgerflow
from ledgerflow.registry import ActionRegistry
from ledgerflow.testing import assert_sound, check_definition
from testing.kit_workflows import EXPENSE, actions


def definition(text: str) -> ledgerflow.Definition:
    return ledgerflow.loads(text, "yaml")


LOOP = """
name: Loop
version: 1
initial_state: a
states: [a, b, c, done]
terminal_states: [done]
transitions:
  - {from: a, to: b, on: Go}
  - {from: b, to: c, on: Go}
  - {from: c, to: b, on: Back}
  - {from: a, to: done, on: Stop}
"""

STUCK = """
name: Stuck
version: 1
initial_state: draft
states: [draft, pending, paid, refused]
terminal_states: [paid, refused]
events:
  Ask:
    payload: {type: object, required: [amount], properties: {amount: {type: integer, minimum: 0}}}
transitions:
  - {from: draft, to: pending, on: Ask, set: {amount: {expr: payload.amount}}}
  - {from: pending, to: paid, on: Pay, condition: "context.amount < 100"}
  - {from: pending, to: refused, on: Refuse, condition: "context.amount > 100"}
"""


def test_a_sound_definition_has_no_problems() -> None:
    assert check_definition(ledgerflow.loads(EXPENSE, "yaml"), actions=actions()) == []
    assert_sound(ledgerflow.loads(EXPENSE, "yaml"), actions=actions())


def test_a_trap_no_terminal_state_can_be_reached_from_is_found() -> None:
    problems = check_definition(definition(LOOP))
    assert [(p.location, p.message) for p in problems] == [
        ("states.b", "no terminal state can be reached from 'b' (it only leads to c)"),
        ("states.c", "no terminal state can be reached from 'c' (it only leads to b)"),
    ]


def test_an_amount_no_condition_lets_out_is_found_by_exploration() -> None:
    problems = check_definition(
        definition(STUCK), samples={"Ask": [{"amount": 5}, {"amount": 100}]}
    )
    [problem] = problems
    assert problem.location == "states.pending"
    assert 'after Ask {"amount": 100}' in problem.message
    assert "no sequence of sample events reaches a terminal state" in problem.message
    with pytest.raises(AssertionError, match="the definition has problems"):
        assert_sound(definition(STUCK), samples={"Ask": [{"amount": 100}]})


def test_unregistered_actions_and_bad_literal_parameters_are_found() -> None:
    workflow = ledgerflow.loads(EXPENSE, "yaml").workflow
    problems = check_definition(workflow, actions=ActionRegistry())
    assert {p.message for p in problems} == {"unknown action 'note'"}
    broken = EXPENSE.replace("params: {amount: 0}", "params: {amount: zero, colour: red}")
    problems = check_definition(definition(broken), actions=actions())
    [problem] = problems
    assert "amount: expected number, got string" in problem.message
    assert "colour: unknown field" in problem.message


def test_a_file_that_does_not_load_reports_its_problems(tmp_path: Any) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: Broken\nversion: 1\nstates: [a]\n")
    problems = check_definition(path)
    assert problems
    assert all(str(path) in str(p) for p in problems)
