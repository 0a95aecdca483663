"""Loading, validating and compiling workflow definitions.

A definition is written in YAML, TOML or JSON (or built in Python as a
:class:`~ledgerflow.model.Workflow`); every form goes through one cattrs converter that refuses
unknown keys and wrong types. :func:`compile_workflow` checks the whole definition, reports every
problem at once with its location, and compiles every expression exactly once into a
:class:`Definition`, the only form the state machine accepts.
"""

from __future__ import annotations

import functools
import json
import re
import tomllib
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeAlias

import attrs
import cattrs
import jsonschema
import yaml
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from ledgerflow import durations, expressions
from ledgerflow.errors import DefinitionError, ExpressionError
from ledgerflow.model import (
    ANY_STATE,
    JSON,
    Backoff,
    Compensation,
    EventSpec,
    OnError,
    Problem,
    Step,
    Transition,
    Workflow,
)

__all__ = [
    "CompiledStep",
    "CompiledTransition",
    "Definition",
    "Format",
    "compile_workflow",
    "dump",
    "dumps",
    "load",
    "loads",
    "parse",
    "to_data",
    "validate",
]

Format: TypeAlias = Literal["yaml", "toml", "json"]

_SUFFIXES: dict[str, Format] = {".yaml": "yaml", ".yml": "yaml", ".toml": "toml", ".json": "json"}
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RENAMED = re.compile(r"(transitions\[\d+\]\.)(source|target)\b")
_EVENT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]*$")


# --------------------------------------------------------------------------------------------
# Reading and writing
# --------------------------------------------------------------------------------------------


class _YamlLoader(yaml.SafeLoader):
    """YAML with 1.2 booleans: only true/false are booleans, so ``on:`` stays a string key."""


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _strict(kind: type[Any], *, accept: tuple[type[Any], ...]) -> Callable[[Any, Any], Any]:
    def structure(value: Any, _: Any) -> Any:
        if isinstance(value, bool) and kind is not bool:
            raise TypeError(f"expected {kind.__name__}, got a boolean")
        if not isinstance(value, accept):
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
        return kind(value)

    return structure


def _string_tuple(value: Any, _: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list | tuple):
        raise TypeError(f"expected a string or a list of strings, got {type(value).__name__}")
    for item in value:
        if not isinstance(item, str):
            raise TypeError(f"expected a list of strings, found {type(item).__name__}")
    return tuple(value)


def _json_mapping(value: Any, _: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a mapping, got {type(value).__name__}")
    return dict(value)


@functools.cache
def _converter() -> cattrs.Converter:
    """The one converter for definitions: strict types, unknown keys refused, and the keyword
    ``from`` for :attr:`Transition.source`."""
    conv = cattrs.Converter(forbid_extra_keys=True, omit_if_default=True)
    conv.register_structure_hook(str, _strict(str, accept=(str,)))
    conv.register_structure_hook(int, _strict(int, accept=(int,)))
    conv.register_structure_hook(float, _strict(float, accept=(int, float)))
    conv.register_structure_hook_func(lambda t: t == tuple[str, ...], _string_tuple)
    conv.register_structure_hook_func(lambda t: t == Mapping[str, JSON], _json_mapping)
    conv.register_structure_hook_func(
        lambda t: t == Mapping[str, JSON] | None,
        lambda v, t: None if v is None else _json_mapping(v, t),
    )
    conv.register_unstructure_hook_func(lambda t: t == Mapping[str, JSON], dict)
    conv.register_structure_hook(
        Transition,
        make_dict_structure_fn(
            Transition,
            conv,
            _cattrs_forbid_extra_keys=True,
            source=override(rename="from"),
            target=override(rename="to"),
        ),
    )
    conv.register_unstructure_hook(
        Transition,
        make_dict_unstructure_fn(
            Transition,
            conv,
            _cattrs_omit_if_default=True,
            source=override(rename="from"),
            target=override(rename="to"),
        ),
    )
    # after Transition's hooks: Workflow's generated functions capture them
    for cls in (Backoff, OnError, Compensation, Step, EventSpec, Workflow):
        conv.register_structure_hook(
            cls, make_dict_structure_fn(cls, conv, _cattrs_forbid_extra_keys=True)
        )
        conv.register_unstructure_hook(
            cls, make_dict_unstructure_fn(cls, conv, _cattrs_omit_if_default=True)
        )
    return conv


def _format_of(path: Path) -> Format:
    try:
        return _SUFFIXES[path.suffix.lower()]
    except KeyError:
        raise DefinitionError(
            [
                Problem(
                    source=str(path), message="unknown file type: use .yaml, .yml, .toml or .json"
                )
            ]
        ) from None


def _decode(text: str, fmt: Format, source: str) -> Any:
    try:
        if fmt == "yaml":
            return yaml.load(text, Loader=_YamlLoader)
        if fmt == "toml":
            return tomllib.loads(text)
        return json.loads(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        message = " ".join(str(exc).split())
        raise DefinitionError(
            [Problem(source=source, message=f"not valid {fmt}: {message}")]
        ) from exc


def parse(data: Any, *, source: str = "") -> Workflow:
    """Structure decoded data (dicts and lists, as from JSON) into a :class:`Workflow`.

    Raises :class:`DefinitionError` naming every unknown key and every value of the wrong type.
    """
    if not isinstance(data, Mapping):
        raise DefinitionError(
            [Problem(source=source, message="a definition must be a mapping at its top level")]
        )
    try:
        return _converter().structure(data, Workflow)
    except cattrs.BaseValidationError as exc:
        problems = [
            Problem(source=source, message=_humanise(message))
            for message in cattrs.transform_error(exc, path="")
        ]
        raise DefinitionError(problems) from exc


def _humanise(message: str) -> str:
    # cattrs says "required field missing @ $.transitions[0].to"; lead with the location instead
    text, _, path = message.rpartition(" @ ")
    if not text:
        return message
    path = path.removeprefix("$").removeprefix(".")
    # cattrs names the attribute; the file says "from" and "to"
    path = _RENAMED.sub(lambda m: m[1] + {"source": "from", "target": "to"}[m[2]], path)
    return f"{path}: {text}" if path else text


def loads(text: str, fmt: Format, *, source: str = "") -> Definition:
    """Read a definition from ``text`` in ``fmt`` and compile it (see :func:`compile_workflow`)."""
    return compile_workflow(parse(_decode(text, fmt, source), source=source), source=source)


def load(path: str | Path, *, actions: Container[str] | None = None) -> Definition:
    """Read, validate and compile the definition in ``path`` (``.yaml``, ``.yml``, ``.toml`` or
    ``.json``). ``actions``, when given, is checked to hold every action the definition uses."""
    path = Path(path)
    fmt = _format_of(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DefinitionError(
            [Problem(source=str(path), message=exc.strerror or str(exc))]
        ) from exc
    workflow = parse(_decode(text, fmt, str(path)), source=str(path))
    return compile_workflow(workflow, source=str(path), actions=actions)


def to_data(workflow: Workflow | Definition) -> dict[str, Any]:
    """The canonical plain-data form of a workflow: fields in declaration order, defaults left
    out. ``parse(to_data(w)) == w`` for every workflow ``w``."""
    if isinstance(workflow, Definition):
        workflow = workflow.workflow
    data: dict[str, Any] = _converter().unstructure(workflow, Workflow)
    return data


def dumps(workflow: Workflow | Definition, fmt: Format = "json") -> str:
    """The canonical text of a workflow in ``fmt`` (JSON by default)."""
    data = to_data(workflow)
    if fmt == "json":
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if fmt == "yaml":
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    raise ValueError(f"cannot write {fmt}; use json or yaml")


def dump(workflow: Workflow | Definition, path: str | Path) -> None:
    """Write the canonical text of a workflow to ``path``, in the format its suffix names."""
    path = Path(path)
    fmt = _format_of(path)
    Path(path).write_text(dumps(workflow, fmt), encoding="utf-8")


# --------------------------------------------------------------------------------------------
# The compiled form
# --------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class CompiledStep:
    """A step with its parameter (and compensation parameter) expressions compiled."""

    step: Step
    params: expressions.Template
    compensate_params: expressions.Template | None


@attrs.frozen(kw_only=True)
class CompiledTransition:
    """A transition with a stable ``id``, its expressions compiled and its steps in an order
    that respects ``depends_on`` (ties keep the order written)."""

    id: str
    transition: Transition
    condition: expressions.Expression | None
    assignments: expressions.Template
    steps: tuple[CompiledStep, ...]
    deadline: expressions.Expression | None = None
    """The compiled ``at`` expression, if the transition has one."""


@attrs.frozen(kw_only=True, eq=False)
class Definition:
    """A valid workflow, every expression compiled once: what the state machine runs.

    Build one with :func:`compile_workflow`, :func:`load` or :func:`loads`.
    """

    workflow: Workflow
    source: str
    transitions: tuple[CompiledTransition, ...]
    payload_validators: Mapping[str, jsonschema.protocols.Validator]
    known_events: frozenset[str]

    @property
    def name(self) -> str:
        """The workflow's name."""
        return self.workflow.name

    @property
    def version(self) -> int:
        """The workflow's version."""
        return self.workflow.version

    def is_terminal(self, state: str) -> bool:
        """Whether ``state`` ends the execution."""
        return state in self.workflow.terminal_states

    def candidates(self, state: str, event: str) -> tuple[CompiledTransition, ...]:
        """The transitions that ``event`` may fire from ``state``, in the order written."""
        return self._index.get((state, event), ())

    def timers(self, state: str) -> tuple[tuple[str, float], ...]:
        """The ``(event, seconds)`` timers armed while an execution is in ``state``."""
        return tuple(
            (ct.transition.on, durations.parse(ct.transition.after))
            for ct in self.transitions
            if ct.transition.after is not None and _leaves(ct.transition, state, self.workflow)
        )

    def deadlines(self, state: str) -> tuple[tuple[str, expressions.Expression], ...]:
        """The ``(event, at)`` timers armed while an execution is in ``state``, each firing at
        the time its expression gives over the context when the state is entered."""
        return tuple(
            (ct.transition.on, ct.deadline)
            for ct in self.transitions
            if ct.deadline is not None and _leaves(ct.transition, state, self.workflow)
        )

    def payload_errors(self, event: str, payload: Mapping[str, JSON]) -> list[str]:
        """Every way ``payload`` breaks the JSON Schema declared for ``event`` (none if the event
        declares no schema), each as ``path: message``."""
        validator = self.payload_validators.get(event)
        if validator is None:
            return []
        found = sorted(
            validator.iter_errors(payload), key=lambda e: list(map(str, e.absolute_path))
        )
        return [f"{_json_path(e.absolute_path)}: {e.message}" for e in found]

    @functools.cached_property
    def _index(self) -> dict[tuple[str, str], tuple[CompiledTransition, ...]]:
        index: dict[tuple[str, str], list[CompiledTransition]] = {}
        for ct in self.transitions:
            for state in self.workflow.states:
                if _leaves(ct.transition, state, self.workflow):
                    index.setdefault((state, ct.transition.on), []).append(ct)
        return {key: tuple(value) for key, value in index.items()}

    def __hash__(self) -> int:
        return hash((self.name, self.version))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Definition) and other.workflow == self.workflow


def _json_path(path: Iterable[Any]) -> str:
    parts = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
    return f"payload{parts}"


def _leaves(transition: Transition, state: str, workflow: Workflow) -> bool:
    if ANY_STATE in transition.source:
        return state not in workflow.terminal_states
    return state in transition.source


def transition_id(index: int, transition: Transition) -> str:
    """The id recorded for a transition: its ``name``, else ``<event>#<position>``."""
    return transition.name or f"{transition.on}#{index}"


def compile_workflow(
    workflow: Workflow, *, source: str = "", actions: Container[str] | None = None
) -> Definition:
    """Validate ``workflow`` and compile every expression in it, once.

    Raises :class:`DefinitionError` listing every problem :func:`validate` finds.
    """
    problems = validate(workflow, source=source, actions=actions)
    if problems:
        raise DefinitionError(problems)
    transitions = tuple(
        CompiledTransition(
            id=transition_id(i, t),
            transition=t,
            condition=None if t.condition is None else expressions.compile_expression(t.condition),
            assignments=expressions.compile_template(dict(t.set)),
            steps=tuple(_compile_step(step) for step in _ordered_steps(t.steps)),
            deadline=None if t.at is None else expressions.compile_expression(t.at),
        )
        for i, t in enumerate(workflow.transitions)
    )
    validators = {
        name: jsonschema.validators.validator_for(spec.payload)(spec.payload)
        for name, spec in workflow.events.items()
        if spec.payload is not None
    }
    known = frozenset(workflow.events) | {t.on for t in workflow.transitions}
    return Definition(
        workflow=workflow,
        source=source,
        transitions=transitions,
        payload_validators=validators,
        known_events=known,
    )


def _compile_step(step: Step) -> CompiledStep:
    return CompiledStep(
        step=step,
        params=expressions.compile_template(dict(step.params)),
        compensate_params=None
        if step.compensate is None
        else expressions.compile_template(dict(step.compensate.params)),
    )


def _ordered_steps(steps: Sequence[Step]) -> list[Step]:
    """Kahn's algorithm, taking ready steps in written order, so the order is deterministic."""
    remaining = list(steps)
    done: set[str] = set()
    ordered: list[Step] = []
    while remaining:
        ready = next(s for s in remaining if all(d in done for d in s.depends_on))
        remaining.remove(ready)
        done.add(ready.id)
        ordered.append(ready)
    return ordered


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def validate(
    workflow: Workflow, *, source: str = "", actions: Container[str] | None = None
) -> list[Problem]:
    """Every problem with ``workflow``, each located by ``source`` and a path within it.

    Checks names, states, transitions, reachability, ways out of non-terminal states,
    ambiguous transitions, steps and their dependencies, expressions, durations and payload
    schemas. When ``actions`` is given (any container of action names, such as an action
    registry), every action a step or compensation names must be in it.
    """
    return [
        Problem(source=source, location=location, message=message)
        for location, message in _problems(workflow, actions)
    ]


def _problems(workflow: Workflow, actions: Container[str] | None) -> Iterator[tuple[str, str]]:
    if not workflow.name.strip():
        yield "name", "the workflow needs a name"
    if workflow.version < 1:
        yield "version", f"version must be a positive integer, got {workflow.version}"
    yield from _state_problems(workflow)
    yield from _event_problems(workflow)
    states = set(workflow.states)
    for i, transition in enumerate(workflow.transitions):
        yield from _transition_problems(i, transition, workflow, states, actions)
    yield from _duplicate_names(workflow)
    yield from _ambiguities(workflow)
    yield from _graph_problems(workflow)


def _state_problems(workflow: Workflow) -> Iterator[tuple[str, str]]:
    if not workflow.states:
        yield "states", "the workflow declares no states"
    seen: set[str] = set()
    for state in workflow.states:
        if state in seen:
            yield "states", f"state {state!r} is declared twice"
        seen.add(state)
        if not _IDENTIFIER.match(state):
            yield "states", f"state name {state!r} must be an identifier (letters, digits, _)"
    if workflow.initial_state not in seen:
        yield "initial_state", f"unknown state {workflow.initial_state!r}"
    for state in workflow.terminal_states:
        if state not in seen:
            yield "terminal_states", f"unknown state {state!r}"
    if workflow.initial_state in workflow.terminal_states:
        yield "initial_state", f"the initial state {workflow.initial_state!r} is terminal"


def _event_problems(workflow: Workflow) -> Iterator[tuple[str, str]]:
    handled = {t.on for t in workflow.transitions}
    for name, spec in workflow.events.items():
        where = f"events.{name}"
        if not _EVENT_NAME.match(name):
            yield where, f"event name {name!r} must start with a letter or _"
        if name not in handled:
            yield where, f"event {name!r} is declared but no transition handles it"
        if spec.payload is not None:
            try:
                jsonschema.validators.validator_for(spec.payload).check_schema(dict(spec.payload))
            except jsonschema.SchemaError as exc:
                yield f"{where}.payload", f"not a valid JSON Schema: {exc.message}"


def _transition_problems(
    index: int,
    t: Transition,
    workflow: Workflow,
    states: set[str],
    actions: Container[str] | None,
) -> Iterator[tuple[str, str]]:
    where = _where(index, t)
    if not t.source:
        yield where, "'from' names no state"
    if ANY_STATE in t.source and len(t.source) > 1:
        yield where, f"'from' mixes {ANY_STATE!r} with named states"
    for state in t.source:
        if state == ANY_STATE:
            continue
        if state not in states:
            yield where, f"unknown source state {state!r}"
        elif state in workflow.terminal_states:
            yield where, f"leaves terminal state {state!r}; terminal states have no way out"
    if t.target not in states:
        yield where, f"unknown target state {t.target!r}"
    if not _EVENT_NAME.match(t.on):
        yield where, f"event name {t.on!r} must start with a letter or _"
    if t.condition is not None:
        yield from _expression_problem(f"{where} condition", t.condition)
    for key, value in t.set.items():
        yield from _template_problems(f"{where} set.{key}", value)
    if t.after is not None:
        try:
            durations.parse(t.after)
        except ValueError as exc:
            yield f"{where} after", str(exc)
    if t.at is not None:
        if t.after is not None:
            yield where, "has both 'after' and 'at'; a timer fires after a delay or at a time"
        yield from _expression_problem(f"{where} at", t.at)
    yield from _step_problems(where, t.steps, actions)


def _where(index: int, t: Transition) -> str:
    return f"transitions[{index}]" + (f" ({t.name})" if t.name else f" ({t.on})")


def _step_problems(
    where: str, steps: Sequence[Step], actions: Container[str] | None
) -> Iterator[tuple[str, str]]:
    ids = [s.id for s in steps]
    known = set(ids)
    seen: set[str] = set()
    for j, step in enumerate(steps):
        at = f"{where} steps[{j}] ({step.id})"
        if step.id in seen:
            yield at, f"step id {step.id!r} is used twice"
        seen.add(step.id)
        if not _IDENTIFIER.match(step.id):
            yield at, f"step id {step.id!r} must be an identifier (letters, digits, _)"
        if not step.action.strip():
            yield at, "the step names no action"
        elif actions is not None and step.action not in actions:
            yield at, f"unknown action {step.action!r}"
        for dep in step.depends_on:
            if dep == step.id:
                yield at, "a step cannot depend on itself"
            elif dep not in known:
                yield at, f"depends_on names unknown step {dep!r}"
        for key, value in step.params.items():
            yield from _template_problems(f"{at} params.{key}", value)
        yield from _on_error_problems(at, step.on_error)
        if step.compensate is not None:
            if not step.compensate.action.strip():
                yield f"{at} compensate", "the compensation names no action"
            elif actions is not None and step.compensate.action not in actions:
                yield f"{at} compensate", f"unknown action {step.compensate.action!r}"
            for key, value in step.compensate.params.items():
                yield from _template_problems(f"{at} compensate.params.{key}", value)
    for cycle in _cycles(steps):
        yield where, "step dependency cycle: " + " -> ".join([*cycle, cycle[0]])


def _on_error_problems(at: str, on_error: OnError) -> Iterator[tuple[str, str]]:
    if on_error.attempts < 1:
        yield f"{at} on_error", f"attempts must be at least 1, got {on_error.attempts}"
    if on_error.strategy != "retry" and on_error.attempts != 1:
        yield (
            f"{at} on_error",
            f"attempts is only meaningful with strategy 'retry', not {on_error.strategy!r}",
        )
    backoff = on_error.backoff
    if backoff.initial < 0 or backoff.maximum < 0:
        yield f"{at} on_error.backoff", "backoff times cannot be negative"
    if backoff.multiplier < 1:
        yield f"{at} on_error.backoff", f"multiplier must be at least 1, got {backoff.multiplier}"
    if backoff.maximum < backoff.initial:
        yield f"{at} on_error.backoff", "maximum is smaller than initial"


def _cycles(steps: Sequence[Step]) -> list[list[str]]:
    """Each dependency cycle once, as the list of step ids on it."""
    graph = {s.id: [d for d in s.depends_on if d != s.id] for s in steps}
    colour: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        colour[node] = 1
        stack.append(node)
        for dep in graph.get(node, ()):
            if dep not in graph:
                continue
            if colour.get(dep) == 1:
                cycles.append(stack[stack.index(dep) :])
            elif dep not in colour:
                visit(dep)
        stack.pop()
        colour[node] = 2

    for node in graph:
        if node not in colour:
            visit(node)
    return cycles


def _expression_problem(where: str, source: str) -> Iterator[tuple[str, str]]:
    try:
        expressions.compile_expression(source)
    except ExpressionError as exc:
        yield where, str(exc)


def _template_problems(where: str, value: JSON) -> Iterator[tuple[str, str]]:
    try:
        expressions.compile_template(value)
    except ExpressionError as exc:
        yield where, str(exc)


def _duplicate_names(workflow: Workflow) -> Iterator[tuple[str, str]]:
    seen: set[str] = set()
    for i, t in enumerate(workflow.transitions):
        if t.name is None:
            continue
        if t.name in seen:
            yield _where(i, t), f"transition name {t.name!r} is used twice"
        seen.add(t.name)


def _ambiguities(workflow: Workflow) -> Iterator[tuple[str, str]]:
    """Two transitions on one event from one state, for overlapping roles, that no condition
    tells apart."""
    ts = workflow.transitions
    for i, first in enumerate(ts):
        for j in range(i + 1, len(ts)):
            second = ts[j]
            if first.on != second.on:
                continue
            shared = [
                s
                for s in workflow.states
                if _leaves(first, s, workflow) and _leaves(second, s, workflow)
            ]
            roles_overlap = (
                not first.roles or not second.roles or set(first.roles) & set(second.roles)
            )
            same_condition = first.condition == second.condition
            if shared and roles_overlap and same_condition:
                yield (
                    _where(j, second),
                    f"ambiguous with {_where(i, first)}: both fire on {first.on!r} from "
                    f"{', '.join(map(repr, shared))} and no condition or role tells them apart",
                )


def _graph_problems(workflow: Workflow) -> Iterator[tuple[str, str]]:
    states = list(dict.fromkeys(workflow.states))
    if workflow.initial_state not in states:
        return
    reached = {workflow.initial_state}
    frontier = [workflow.initial_state]
    while frontier:
        state = frontier.pop()
        for t in workflow.transitions:
            if _leaves(t, state, workflow) and t.target in states and t.target not in reached:
                reached.add(t.target)
                frontier.append(t.target)
    for state in states:
        if state not in reached:
            yield "states", f"state {state!r} cannot be reached from {workflow.initial_state!r}"
        terminal = state in workflow.terminal_states
        if not terminal and not any(_leaves(t, state, workflow) for t in workflow.transitions):
            yield "states", f"non-terminal state {state!r} has no transition out of it"
