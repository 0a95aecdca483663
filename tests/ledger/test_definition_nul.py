"""A definition holding a NUL character (or a lone surrogate) anywhere (a parameter's name, say)
is refused with a typed error when registered, and nothing is written: no store keeps NUL in
JSON, nor text that is not Unicode."""

from __future__ import annotations

from typing import Any

import pytest

from ledgerflow import definitions
from ledgerflow.engine import Engine
from ledgerflow.errors import InvalidInputError

WORKFLOW: dict[str, Any] = {
    "name": "Nul",
    "version": 1,
    "initial_state": "open",
    "states": ["open", "closed"],
    "terminal_states": ["closed"],
    "transitions": [
        {
            "name": "close",
            "from": "open",
            "to": "closed",
            "on": "Close",
            "steps": [{"id": "note", "action": "ledgerflow.record", "params": {"a\x00b": 1}}],
        }
    ],
}


def test_a_definition_holding_nul_is_refused_and_nothing_is_written(engine: Engine) -> None:
    compiled = definitions.compile_workflow(definitions.parse(WORKFLOW))
    before = engine.store.row_counts()
    with pytest.raises(InvalidInputError, match="NUL"):
        engine.register(compiled)
    assert engine.store.row_counts() == before


@pytest.mark.parametrize("where", ["name", "state", "event"])
def test_a_name_longer_than_the_store_keeps_is_refused_and_nothing_is_written(
    engine: Engine, where: str
) -> None:
    long = "x" * 201
    body = {**WORKFLOW, "transitions": [{**WORKFLOW["transitions"][0], "steps": []}]}
    if where == "name":
        body["name"] = long
    elif where == "state":
        body = {**body, "states": ["open", long], "terminal_states": [long]}
        body["transitions"] = [{**body["transitions"][0], "to": long}]
    else:
        body["transitions"] = [{**body["transitions"][0], "on": long}]
    compiled = definitions.compile_workflow(definitions.parse(body))
    before = engine.store.row_counts()
    with pytest.raises(InvalidInputError, match="longer than 200 characters"):
        engine.register(compiled)
    assert engine.store.row_counts() == before


def test_a_definition_holding_a_lone_surrogate_is_refused_and_nothing_is_written(
    engine: Engine,
) -> None:
    # no UTF-8 holds it: PostgreSQL would refuse the JSON with a raw driver error
    step = {**WORKFLOW["transitions"][0]["steps"][0], "params": {"note": "\ud800"}}
    body = {**WORKFLOW, "transitions": [{**WORKFLOW["transitions"][0], "steps": [step]}]}
    compiled = definitions.compile_workflow(definitions.parse(body))
    before = engine.store.row_counts()
    with pytest.raises(InvalidInputError, match="not Unicode text"):
        engine.register(compiled)
    assert engine.store.row_counts() == before
