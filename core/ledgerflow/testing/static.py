"""Static checks of a definition, runnable as a test: :func:`check_definition` lists what is
wrong, :func:`assert_sound` fails with the list.

Beyond what :func:`ledgerflow.definitions.validate` refuses (every state reachable, a way out
of every non-terminal state, every action registered), they find:

- **traps**: states from which no terminal state can be reached by any transition, however
  the conditions turn out (two states that only lead to each other, say);
- **literal parameters** a step gives its action that the action's schema refuses (steps whose
  parameters are all literal values are checked before anything runs);
- **dead ends by exploration**: starting from the initial state, every sequence of up to
  ``depth`` sample events is decided (conditions, roles and payloads included, with every
  step assumed to succeed); a state reached from which no sequence of sample events leads to
  a terminal state within the bound is reported with the events that lead to it.
"""

from __future__ import annotations

import json
from collections.abc import Container, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

from ledgerflow import definitions as definitions_module
from ledgerflow import machine
from ledgerflow.definitions import Definition
from ledgerflow.errors import DefinitionError, InvalidParametersError
from ledgerflow.model import (
    JSON,
    Accepted,
    Event,
    Problem,
    State,
    Status,
    Workflow,
)
from ledgerflow.registry import ActionRegistry

__all__ = ["assert_sound", "check_definition"]

DefinitionSource: TypeAlias = Definition | Workflow | str | Path


def check_definition(
    definition: DefinitionSource,
    *,
    actions: Container[str] | None = None,
    depth: int = 6,
    samples: Mapping[str, Sequence[Mapping[str, JSON]]] | None = None,
    context: Mapping[str, JSON] | None = None,
) -> list[Problem]:
    """Every problem with ``definition`` (a definition, a workflow, or a file), each with its
    location; an empty list when there is none.

    ``actions`` (an :class:`~ledgerflow.registry.ActionRegistry`, or any container of action
    names) is checked to hold every action the steps name; a registry also checks literal
    parameters against each action's schema. The exploration starts from ``context`` and
    sends, in each state, every event with each payload of ``samples[event]`` (by default one
    small payload its schema accepts) and each role its transitions name, up to ``depth``
    events deep.
    """
    source = definition if isinstance(definition, str | Path) else ""
    try:
        workflow = _workflow(definition)
    except DefinitionError as exc:
        return list(exc.problems)
    problems = definitions_module.validate(workflow, source=str(source), actions=actions)
    if problems:
        return problems
    compiled = (
        definition
        if isinstance(definition, Definition)
        else definitions_module.compile_workflow(workflow, source=str(source))
    )
    found = list(_traps(workflow))
    if isinstance(actions, ActionRegistry):
        found += _literal_parameters(workflow, actions)
    if not found:
        found += _explore(compiled, depth, samples or {}, dict(context or {}))
    return [Problem(source=str(source), location=where, message=m) for where, m in found]


def assert_sound(
    definition: DefinitionSource,
    *,
    actions: Container[str] | None = None,
    depth: int = 6,
    samples: Mapping[str, Sequence[Mapping[str, JSON]]] | None = None,
    context: Mapping[str, JSON] | None = None,
) -> None:
    """Raise :class:`AssertionError` listing every problem :func:`check_definition` finds."""
    problems = check_definition(
        definition, actions=actions, depth=depth, samples=samples, context=context
    )
    if problems:
        raise AssertionError(
            "the definition has problems:\n" + "\n".join(f"- {p}" for p in problems)
        )


def _workflow(definition: DefinitionSource) -> Workflow:
    if isinstance(definition, Definition):
        return definition.workflow
    if isinstance(definition, Workflow):
        return definition
    return definitions_module.load(definition).workflow


# --------------------------------------------------------------------------------------------
# The graph of states
# --------------------------------------------------------------------------------------------


def _successors(workflow: Workflow) -> dict[str, set[str]]:
    terminal = set(workflow.terminal_states)
    graph: dict[str, set[str]] = {state: set() for state in workflow.states}
    for t in workflow.transitions:
        for state in workflow.states:
            leaves = state not in terminal if "*" in t.source else state in t.source
            if leaves:
                graph[state].add(t.target)
    return graph


def _traps(workflow: Workflow) -> Iterator[tuple[str, str]]:
    terminal = set(workflow.terminal_states)
    if not terminal:
        return  # a workflow without an end (a subscription, say) is allowed to run forever
    graph = _successors(workflow)
    finishing = set(terminal)
    changed = True
    while changed:
        changed = False
        for state, targets in graph.items():
            if state not in finishing and targets & finishing:
                finishing.add(state)
                changed = True
    for state in workflow.states:
        if state not in finishing:
            leads = ", ".join(sorted(graph[state])) or "nothing"
            yield (
                f"states.{state}",
                f"no terminal state can be reached from {state!r} (it only leads to {leads})",
            )


def _literal_parameters(workflow: Workflow, registry: ActionRegistry) -> Iterator[tuple[str, str]]:
    for i, t in enumerate(workflow.transitions):
        for j, step in enumerate(t.steps):
            if step.action not in registry or _has_expression(step.params):
                continue
            try:
                registry.get(step.action).validate(step.params)
            except InvalidParametersError as exc:
                where = f"transitions[{i}] ({t.name or t.on}) steps[{j}] ({step.id})"
                yield where, str(exc)


def _has_expression(value: JSON) -> bool:
    return _walk(value)


def _walk(value: JSON) -> bool:
    if isinstance(value, Mapping):
        if set(value) == {"expr"}:
            return True
        return any(_walk(v) for v in value.values())
    if isinstance(value, list):
        return any(_walk(v) for v in value)
    return False


# --------------------------------------------------------------------------------------------
# Bounded exploration
# --------------------------------------------------------------------------------------------


def _sample_payloads(
    definition: Definition, samples: Mapping[str, Sequence[Mapping[str, JSON]]]
) -> dict[str, list[dict[str, JSON]]]:
    chosen: dict[str, list[dict[str, JSON]]] = {}
    for name in sorted(definition.known_events):
        if name in samples:
            chosen[name] = [dict(p) for p in samples[name]]
            continue
        spec = definition.workflow.events.get(name)
        if spec is None or spec.payload is None:
            chosen[name] = [{}]
            continue
        minimal = _minimal_instance(spec.payload)
        chosen[name] = [minimal] if isinstance(minimal, dict) else []
    return chosen


def _minimal_instance(schema: Mapping[str, Any]) -> JSON:
    """The simplest value a schema accepts, as hypothesis shrinks it (``None`` if hypothesis
    is not installed or finds none)."""
    try:
        from hypothesis import HealthCheck, find, settings
        from hypothesis.errors import NoSuchExample

        from ledgerflow.testing.strategies import from_schema
    except ImportError:  # pragma: no cover - hypothesis ships with the test extra
        return None
    try:
        return find(
            from_schema(schema),
            lambda _: True,
            settings=settings(database=None, suppress_health_check=list(HealthCheck)),
        )
    except NoSuchExample:
        return None


def _key(state: State) -> str:
    return json.dumps([state.name, state.status.value, state.context], sort_keys=True, default=repr)


def _explore(
    definition: Definition,
    depth: int,
    samples: Mapping[str, Sequence[Mapping[str, JSON]]],
    context: Mapping[str, JSON],
) -> Iterator[tuple[str, str]]:
    payloads = _sample_payloads(definition, samples)
    roles: dict[str, list[str | None]] = {}
    for name in payloads:
        named = sorted(
            {
                r
                for ct in definition.transitions
                if ct.transition.on == name
                for r in ct.transition.roles
            }
        )
        open_to_all = any(
            not ct.transition.roles for ct in definition.transitions if ct.transition.on == name
        )
        roles[name] = [*named, *([None] if open_to_all or not named else [])]
    events = [
        Event(name=name, payload=payload, role=role)
        for name in payloads
        for payload in payloads[name]
        for role in roles[name]
    ]
    start = machine.fold(definition, [machine.start(definition, context=context)])
    paths: dict[str, tuple[Event, ...]] = {_key(start): ()}
    states: dict[str, State] = {_key(start): start}
    edges: dict[str, set[str]] = {}
    frontier = [_key(start)]
    for _ in range(depth):
        following: list[str] = []
        for key in frontier:
            state = states[key]
            if state.status is not Status.ACTIVE:
                continue
            edges[key] = set()
            for event in events:
                decision = machine.decide(definition, state, event)
                if not isinstance(decision, Accepted):
                    continue
                after = machine.fold(
                    definition, machine.simulate(definition, [*paths[key], event], context=context)
                )
                target = _key(after)
                edges[key].add(target)
                if target not in states:
                    states[target] = after
                    paths[target] = (*paths[key], event)
                    following.append(target)
        frontier = following
    # a state can finish if it is terminal, or was not explored (past the bound), or leads to
    # one that can
    finishing = {k for k, s in states.items() if s.status is not Status.ACTIVE or k not in edges}
    changed = True
    while changed:
        changed = False
        for key, targets in edges.items():
            if key not in finishing and targets & finishing:
                finishing.add(key)
                changed = True
    reported: set[str] = set()
    for key, state in states.items():
        if key in finishing or state.name in reported:
            continue
        reported.add(state.name)
        path = ", then ".join(_shown(e) for e in paths[key]) or "no event"
        yield (
            f"states.{state.name}",
            f"after {path}, the execution is in {state.name!r} with context "
            f"{json.dumps(dict(state.context), sort_keys=True)} and no sequence of sample "
            f"events reaches a terminal state from there (explored {depth} events deep)",
        )


def _shown(event: Event) -> str:
    by = f" by {event.role}" if event.role is not None else ""
    return f"{event.name}{by} {json.dumps(dict(event.payload), sort_keys=True)}"
