"""Properties: validate and json_schema agree, for generated schemas and generated parameters.

The JSON Schema is checked by the ``jsonschema`` package, independently of the registry's own
checks: a mapping passes :meth:`Action.validate` exactly when it satisfies the schema, what
validate returns satisfies it too, and validate names exactly the fields the schema objects to.
"""

from __future__ import annotations

import enum
import json
import string
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import attrs
import cattrs
import jsonschema
from hypothesis import given
from hypothesis import strategies as st

from ledgerflow.errors import InvalidParametersError
from ledgerflow.model import JSON
from ledgerflow.registry import NO_DEFAULT, Action, ActionContext, ActionRegistry, Param

TYPES = ("string", "integer", "number", "boolean", "object", "array", "any")

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=6,
)
names = st.text(alphabet=string.ascii_letters + string.digits + "_", min_size=1, max_size=6)


def values_of(kind: str) -> st.SearchStrategy[Any]:
    """Values of the JSON type ``kind``, including the edge cases: whole floats as integers."""
    return {
        "string": st.text(max_size=4),
        "integer": st.integers() | st.integers(-(2**53), 2**53).map(float),
        "number": st.integers() | st.floats(allow_nan=False, allow_infinity=False),
        "boolean": st.booleans(),
        "object": st.dictionaries(st.text(max_size=3), json_values, max_size=3),
        "array": st.lists(json_values, max_size=3),
        "any": json_values,
    }[kind]


@st.composite
def param_schemas(draw: st.DrawFn) -> list[Param]:
    params = []
    for name in draw(st.lists(names, unique=True, max_size=6)):
        kind = draw(st.sampled_from(TYPES))
        required = draw(st.booleans())
        default = NO_DEFAULT
        if not required and draw(st.booleans()):
            default = draw(values_of(kind))
        params.append(Param(name=name, type=kind, required=required, default=default))  # type: ignore[arg-type]
    return params


@st.composite
def arguments(draw: st.DrawFn, params: Sequence[Param]) -> dict[str, Any]:
    """Parameters for ``params``: about half the time conforming, else each field left out, of
    its type or of any JSON type, plus perhaps unknown fields."""
    if draw(st.booleans()):
        return {
            param.name: draw(values_of(param.type))
            for param in params
            if param.required or draw(st.booleans())
        }
    given: dict[str, Any] = {}
    for param in params:
        choice = draw(st.sampled_from(["absent", "typed", "anything"]))
        if choice == "typed":
            given[param.name] = draw(values_of(param.type))
        elif choice == "anything":
            given[param.name] = draw(json_values)
    known = {param.name for param in params}
    extra = draw(st.dictionaries(names.filter(lambda n: n not in known), json_values, max_size=2))
    return {**given, **extra}


def run(params: Any, ctx: ActionContext) -> Any:
    return params


def outcome(action: Action, given: Mapping[str, Any]) -> tuple[Any, tuple[str, ...]]:
    """What validate returns and the problems it raises (one of the two is empty)."""
    try:
        return action.validate(given), ()
    except InvalidParametersError as exc:
        return None, exc.problems


def field_of(problem: str) -> str:
    return problem.partition(":")[0]


@given(data=st.data(), params=param_schemas(), additional=st.booleans())
def test_validate_and_json_schema_agree_on_param_schemas(
    data: st.DataObject, params: list[Param], additional: bool
) -> None:
    action = ActionRegistry().register_simple_action(
        "generated", "", params, run, additional_params=additional
    )
    schema = action.json_schema()
    json.dumps(schema)
    validator = jsonschema.Draft202012Validator(schema)
    validator.check_schema(schema)
    given = data.draw(arguments(params), label="params")

    # which fields the schema objects to, asked field by field
    properties = schema["properties"]
    expected_bad = set() if additional else {name for name in given if name not in properties}
    expected_bad |= {name for name in schema["required"] if name not in given}
    expected_bad |= {
        name
        for name, value in given.items()
        if name in properties
        and not jsonschema.Draft202012Validator(properties[name]).is_valid(value)
    }

    result, problems = outcome(action, given)
    if result is None:
        assert problems
        assert not validator.is_valid(given)
        assert {field_of(problem) for problem in problems} == expected_bad
        assert len(problems) == len(expected_bad)
    else:
        assert validator.is_valid(given)
        assert expected_bad == set()
        validator.validate(result)
        for param in params:
            if param.name in given:
                assert result[param.name] == given[param.name]
            elif param.has_default:
                assert result[param.name] == param.default
            else:
                assert param.name not in result
        for name, value in given.items():
            if name not in properties:
                assert result[name] == value


# --------------------------------------------------------------------------------------------
# attrs schemas
# --------------------------------------------------------------------------------------------


class Colour(enum.Enum):
    RED = "red"
    GREEN = "green"
    ONE = 1


@attrs.frozen(kw_only=True)
class Inner:
    label: str
    weight: float = 1.0


@attrs.frozen(kw_only=True)
class Everything:
    text: str
    count: int
    ratio: float = 0.0
    flag: bool = False
    choice: Literal["a", "b", 0] = "a"
    colour: Colour = Colour.RED
    maybe: int | None = None
    inner: Inner | None = None
    items: list[Inner] = attrs.Factory(list)
    numbers: tuple[int, ...] = ()
    sequence: Sequence[str] = ()
    table: dict[str, bool] = attrs.Factory(dict)
    mapping: Mapping[str, list[int]] = attrs.Factory(dict)
    anything: JSON = None


VALID: dict[str, st.SearchStrategy[Any]] = {
    "text": st.text(max_size=3),
    "count": values_of("integer"),
    "ratio": values_of("number"),
    "flag": st.booleans(),
    "choice": st.sampled_from(["a", "b", 0, 0.0]),
    "colour": st.sampled_from(["red", "green", 1, 1.0]),
    "maybe": st.none() | values_of("integer"),
    "inner": st.none()
    | st.fixed_dictionaries(
        {"label": st.text(max_size=2)}, optional={"weight": values_of("number")}
    ),
    "items": st.lists(st.fixed_dictionaries({"label": st.text(max_size=2)}), max_size=2),
    "numbers": st.lists(values_of("integer"), max_size=3),
    "sequence": st.lists(st.text(max_size=2), max_size=3),
    "table": st.dictionaries(st.text(max_size=2), st.booleans(), max_size=2),
    "mapping": st.dictionaries(
        st.text(max_size=2), st.lists(values_of("integer"), max_size=2), max_size=2
    ),
    "anything": json_values,
}
"""Values each field of :class:`Everything` accepts."""

NEAR_MISSES: dict[str, st.SearchStrategy[Any]] = {
    "choice": st.sampled_from([False, "c", 0.5]),
    "colour": st.sampled_from([True, "RED", "blue"]),
    "inner": st.fixed_dictionaries(
        {"label": scalars}, optional={"weight": scalars, "other": json_values}
    ),
    "items": st.lists(st.fixed_dictionaries({"label": scalars}), min_size=1, max_size=2),
    "numbers": st.lists(scalars, min_size=1, max_size=3),
    "sequence": st.lists(scalars, min_size=1, max_size=3),
    "table": st.dictionaries(st.text(max_size=2), scalars, min_size=1, max_size=2),
    "mapping": st.dictionaries(
        st.text(max_size=2), st.lists(scalars, min_size=1, max_size=2), min_size=1, max_size=2
    ),
}
"""Values that look right but may break the schema deep inside."""


@st.composite
def everything_arguments(draw: st.DrawFn) -> dict[str, Any]:
    """Parameters for :class:`Everything`: all valid about half the time, else with some fields
    left out, wrong, wrong deep inside, or unknown."""
    if draw(st.booleans()):
        required = {"text", "count"}
        optional = draw(st.sets(st.sampled_from(sorted(VALID.keys() - required))))
        return {name: draw(VALID[name]) for name in sorted(required | optional)}
    given: dict[str, Any] = {}
    for name, values in VALID.items():
        choice = draw(st.sampled_from(["absent", "valid", "valid", "near miss", "anything"]))
        if choice == "valid":
            given[name] = draw(values)
        elif choice == "near miss":
            given[name] = draw(NEAR_MISSES.get(name, json_values))
        elif choice == "anything":
            given[name] = draw(json_values)
    extra = draw(st.dictionaries(names.filter(lambda n: n not in VALID), json_values, max_size=1))
    return {**given, **extra}


def everything_action() -> Action:
    registry = ActionRegistry()
    registry.action("everything", params=Everything)(run)
    return registry.get("everything")


EVERYTHING = everything_action()
EVERYTHING_SCHEMA = jsonschema.Draft202012Validator(EVERYTHING.json_schema())


def test_the_attrs_schema_is_a_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(EVERYTHING.json_schema())
    json.dumps(EVERYTHING.json_schema())


@given(given=everything_arguments())
def test_validate_and_json_schema_agree_on_attrs_schemas(given: dict[str, Any]) -> None:
    result, problems = outcome(EVERYTHING, given)
    if result is None:
        assert problems
        assert not EVERYTHING_SCHEMA.is_valid(given)
        bad_fields = {
            error.absolute_path[0] if error.absolute_path else None
            for error in EVERYTHING_SCHEMA.iter_errors(given)
        }
        named = {field_of(problem).split(".")[0].split("[")[0] for problem in problems}
        # every field the schema objects to below the top is named; a missing or unknown field
        # is reported by the schema at the top, without a path, and checked in the other tests
        assert {field for field in bad_fields if field is not None} <= named
    else:
        assert isinstance(result, Everything)
        assert EVERYTHING_SCHEMA.is_valid(given)
        # and the instance turns back into parameters that satisfy the schema
        EVERYTHING_SCHEMA.validate(cattrs.Converter().unstructure(result))
