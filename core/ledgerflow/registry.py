"""The action registry: the names a workflow's steps may call, with their parameter schemas.

An action is a Python function called as ``fn(params, ctx)``: ``params`` are the step's
parameters after :meth:`Action.validate`, ``ctx`` an :class:`ActionContext`. A *simple* action may
do anything and is run at least once per idempotency key; a *database* action receives an open
transaction at the isolation level it declares, and its effect commits together with its result
record: exactly once per key.

An action may have a circuit breaker (:class:`~ledgerflow.breakers.BreakerPolicy`): opt-in, per
action. Without one, every call is made however often the action fails.

The registry only registers, validates and describes actions; an executor runs them. It is an
ordinary object: build one per engine (plugins register into it), never a module global.

Parameters are described in one of two ways, and both give a JSON Schema (draft 2020-12):

- a list of :class:`Param` (or mappings of the same keys): :meth:`Action.validate` returns a
  ``dict`` with defaults filled in;
- an attrs class: :meth:`Action.validate` returns an instance of it, structured by a private
  cattrs converter that refuses unknown keys and converts no type into another (``"1"`` is not
  an integer, ``true`` is not a number).

In both, a whole number written as a float (``3.0``, the same JSON number as ``3``) is accepted
where an integer is expected and handed over as ``int``, as JSON Schema's ``integer`` does; an
integer is accepted where a number is expected.
"""

from __future__ import annotations

import copy
import enum
import functools
import inspect
import json
import math
import re
import threading
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias, TypeVar

import attrs
import cattrs
from cattrs.cols import (
    homogenous_tuple_structure_factory,
    is_mapping,
    is_sequence,
    list_structure_factory,
    mapping_structure_factory,
)
from cattrs.gen import make_dict_structure_fn

from ledgerflow.breakers import BreakerPolicy
from ledgerflow.errors import ActionRegistrationError, InvalidParametersError, UnknownActionError
from ledgerflow.model import JSON

if TYPE_CHECKING:
    import sqlalchemy.engine

__all__ = [
    "JSON_SCHEMA_DIALECT",
    "NO_DEFAULT",
    "Action",
    "ActionContext",
    "ActionKind",
    "ActionRegistry",
    "Isolation",
    "Param",
    "ParamType",
]

F = TypeVar("F", bound=Callable[..., Any])

JSON_SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
"""The ``$schema`` of every schema :meth:`Action.json_schema` returns."""

ParamType: TypeAlias = Literal["string", "integer", "number", "boolean", "object", "array", "any"]
"""The type of a :class:`Param`: a JSON Schema type name, or ``any`` for no constraint."""

ActionKind: TypeAlias = Literal["simple", "database"]
"""``simple``: run at least once per idempotency key; ``database``: run in a transaction that
also records its result, exactly once per key."""

_PARAM_TYPES: Final[tuple[str, ...]] = typing.get_args(ParamType)
_KINDS: Final[tuple[str, ...]] = typing.get_args(ActionKind)
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")
_PARAM_KEYS: Final = ("name", "type", "required", "default", "description")


class Isolation(enum.StrEnum):
    """The isolation level of a database action's transaction.

    The values are SQLAlchemy's ``isolation_level`` strings. SQLite accepts only
    ``READ UNCOMMITTED`` and ``SERIALIZABLE``; the executor runs ``READ COMMITTED`` and
    ``REPEATABLE READ`` actions at ``SERIALIZABLE`` there, which every SQLite write transaction
    is anyway (there is one writer at a time).
    """

    READ_UNCOMMITTED = "READ UNCOMMITTED"
    READ_COMMITTED = "READ COMMITTED"
    REPEATABLE_READ = "REPEATABLE READ"
    SERIALIZABLE = "SERIALIZABLE"

    @classmethod
    def parse(cls, value: Isolation | str) -> Isolation:
        """The level ``value`` names: a member, its value (``"READ COMMITTED"``) or its name
        (``"READ_COMMITTED"``), in any case.

        Raises :class:`ActionRegistrationError` naming the accepted levels.
        """
        if isinstance(value, Isolation):
            return value
        if isinstance(value, str):
            wanted = " ".join(value.replace("_", " ").split()).upper()
            for level in cls:
                if level.value == wanted:
                    return level
        accepted = ", ".join(level.value for level in cls)
        raise ActionRegistrationError(f"unknown isolation level {value!r}; use one of {accepted}")


class _NoDefault(enum.Enum):
    NO_DEFAULT = "NO_DEFAULT"

    def __repr__(self) -> str:
        return "NO_DEFAULT"


NO_DEFAULT: Final = _NoDefault.NO_DEFAULT
"""The :attr:`Param.default` of a parameter that has no default (``None`` is a JSON value)."""


# --------------------------------------------------------------------------------------------
# JSON values and their types
# --------------------------------------------------------------------------------------------


def _json_type(value: object) -> str:
    """The JSON Schema type name of ``value``, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


def _shown(value: object) -> str:
    """``value`` as JSON text when it has that form, for messages."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _is_json(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if value is None or isinstance(value, bool | int | str):
        return True
    if isinstance(value, list):
        return all(_is_json(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json(v) for k, v in value.items())
    return False


class _WrongType(Exception):
    """A value is not of the type a schema asks for; the message is ``expected …, got …``."""


def _as_type(kind: str, value: Any) -> Any:
    """``value`` as a value of the JSON type ``kind``, converted only between the Python forms
    of one JSON value (``3.0`` → ``3``, a tuple → a list); raises :class:`_WrongType`."""
    if kind == "any":
        return value
    if kind == "string" and isinstance(value, str):
        return value
    if kind == "boolean" and isinstance(value, bool):
        return value
    if not isinstance(value, bool):
        if kind == "integer":
            if isinstance(value, int):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
        if kind == "number" and isinstance(value, int | float):
            return value
    if kind == "object" and isinstance(value, Mapping):
        return dict(value)
    if kind == "array" and isinstance(value, list | tuple):
        return list(value)
    raise _WrongType(f"expected {kind}, got {_json_type(value)}")


# --------------------------------------------------------------------------------------------
# Param schemas
# --------------------------------------------------------------------------------------------


def _check_param_name(_: Any, __: Any, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ActionRegistrationError(f"a parameter needs a non-empty string name, not {value!r}")


def _check_param_type(instance: Param, _: Any, value: object) -> None:
    if value not in _PARAM_TYPES:
        raise ActionRegistrationError(
            f"parameter {instance.name!r}: unknown type {value!r}; "
            f"use one of {', '.join(_PARAM_TYPES)}"
        )


def _check_bool(instance: Param, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise ActionRegistrationError(
            f"parameter {instance.name!r}: {attribute.name} must be true or false, not {value!r}"
        )


def _check_description(instance: Param, _: Any, value: object) -> None:
    if not isinstance(value, str):
        raise ActionRegistrationError(
            f"parameter {instance.name!r}: description must be a string, not {value!r}"
        )


def _copy_default(value: Any) -> Any:
    # the caller's list or dict must not change the schema after the fact
    return value if value is NO_DEFAULT else copy.deepcopy(value)


@attrs.frozen(kw_only=True)
class Param:
    """One parameter of a schema: a field of the parameters mapping.

    A required parameter must be present; an optional one may be absent, and then takes
    ``default`` if it has one (a fresh copy each time) and is left out otherwise. ``type`` is a
    JSON Schema type, or ``any``; there is no ``null`` type, so ``None`` is only a value of an
    ``any`` parameter.

    Raises :class:`ActionRegistrationError` for an empty name, an unknown type, a default on a
    required parameter, or a default that is not a JSON value of the parameter's type.
    """

    name: str = attrs.field(validator=_check_param_name)
    type: ParamType = attrs.field(default="any", validator=_check_param_type)
    required: bool = attrs.field(default=True, validator=_check_bool)
    default: JSON = attrs.field(default=NO_DEFAULT, converter=_copy_default)
    description: str = attrs.field(default="", validator=_check_description)

    def __attrs_post_init__(self) -> None:
        if not self.has_default:
            return
        if self.required:
            raise ActionRegistrationError(
                f"parameter {self.name!r} is required and has a default; a default only applies "
                "to an optional parameter (required=False)"
            )
        if not _is_json(self.default):
            raise ActionRegistrationError(
                f"parameter {self.name!r}: the default {self.default!r} is not a JSON value"
            )
        try:
            _as_type(self.type, self.default)
        except _WrongType as exc:
            raise ActionRegistrationError(
                f"parameter {self.name!r}: the default does not match its type: {exc}"
            ) from None

    @property
    def has_default(self) -> bool:
        """Whether the parameter has a default (``default`` is not :data:`NO_DEFAULT`)."""
        return self.default is not NO_DEFAULT

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Param:
        """The parameter a mapping such as ``{"name": "userId", "type": "string"}`` describes,
        with the keys ``name``, ``type``, ``required``, ``default`` and ``description``.

        Raises :class:`ActionRegistrationError` for an unknown or missing key, or a bad value.
        """
        unknown = sorted(str(key) for key in data if key not in _PARAM_KEYS)
        if unknown:
            raise ActionRegistrationError(
                f"parameter {data.get('name')!r}: unknown key {', '.join(map(repr, unknown))}; "
                f"a parameter has {', '.join(_PARAM_KEYS)}"
            )
        if "name" not in data:
            raise ActionRegistrationError(f"a parameter needs a name: {dict(data)!r}")
        return cls(**data)

    def json_schema(self) -> dict[str, Any]:
        """The JSON Schema of this parameter's value."""
        schema: dict[str, Any] = {} if self.type == "any" else {"type": self.type}
        if self.description:
            schema["description"] = self.description
        if self.has_default:
            schema["default"] = copy.deepcopy(self.default)
        return schema


def _params(value: object, action: str) -> tuple[Param, ...]:
    if isinstance(value, type):
        raise ActionRegistrationError(
            f"action {action!r}: params must be a list of Param or mappings here; to use the "
            f"attrs class {value.__qualname__} as the schema, register with the action decorator"
        )
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence):
        raise ActionRegistrationError(
            f"action {action!r}: params must be a list of Param or mappings, "
            f"not {type(value).__name__}"
        )
    params: list[Param] = []
    for index, item in enumerate(value):
        try:
            if isinstance(item, Param):
                params.append(item)
            elif isinstance(item, Mapping):
                params.append(Param.from_mapping(item))
            else:
                raise ActionRegistrationError(
                    f"parameter {index} must be a Param or a mapping, not {type(item).__name__}"
                )
        except ActionRegistrationError as exc:
            raise ActionRegistrationError(f"action {action!r}: {exc}") from None
    names = [param.name for param in params]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ActionRegistrationError(
            f"action {action!r}: parameter {', '.join(map(repr, duplicates))} is declared "
            "more than once"
        )
    return tuple(params)


def _params_schema(params: tuple[Param, ...], additional: bool) -> dict[str, Any]:
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "type": "object",
        "properties": {param.name: param.json_schema() for param in params},
        "required": [param.name for param in params if param.required],
        "additionalProperties": additional,
    }


def _validate_params(
    params: tuple[Param, ...], given: Mapping[Any, Any], additional: bool
) -> list[str] | dict[str, Any]:
    problems: list[str] = []
    result: dict[str, Any] = {}
    for param in params:
        if param.name in given:
            try:
                result[param.name] = _as_type(param.type, given[param.name])
            except _WrongType as exc:
                problems.append(f"{param.name}: {exc}")
        elif param.required:
            problems.append(f"{param.name}: missing required field")
        elif param.has_default:
            result[param.name] = copy.deepcopy(param.default)
    known = {param.name for param in params}
    for key, value in given.items():
        if key in known:
            continue
        if additional and isinstance(key, str):
            result[key] = value
        else:
            problems.append(f"{key}: unknown field")
    return problems or result


# --------------------------------------------------------------------------------------------
# attrs-class schemas
# --------------------------------------------------------------------------------------------


class _Unsupported(Exception):
    """A type the registry can neither describe in JSON Schema nor structure strictly."""


def _optional_of(tp: Any) -> Any | None:
    """``X`` when ``tp`` is ``X | None`` (``Optional[X]``), else ``None``."""
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return None
    others = [arg for arg in typing.get_args(tp) if arg is not type(None)]
    if len(others) != 1 or len(others) == len(typing.get_args(tp)):
        return None
    return others[0]


def _is_enum(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, enum.Enum)


def _is_choice(tp: Any) -> bool:
    return typing.get_origin(tp) is Literal or _is_enum(tp)


def _enum_values(tp: Any) -> list[Any]:
    if typing.get_origin(tp) is Literal:
        return list(typing.get_args(tp))
    return [member.value for member in tp]


def _same_json(a: object, b: object) -> bool:
    # Python says True == 1, JSON does not; JSON says 1 == 1.0, as Python does
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return _json_type(a) == _json_type(b) and a == b


def _describe_default(field: attrs.Attribute[Any]) -> tuple[bool, Any]:
    default: Any = field.default
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        if default.takes_self:
            return False, None
        default = default.factory()
    if default is attrs.NOTHING:
        return False, None
    if isinstance(default, enum.Enum):
        default = default.value
    if isinstance(default, tuple):
        default = list(default)
    return (True, default) if _is_json(default) else (False, None)


def _class_schema(cls: type[Any], seen: tuple[type[Any], ...]) -> dict[str, Any]:
    if cls in seen:
        raise _Unsupported(f"{cls.__qualname__} contains itself")
    try:
        attrs.resolve_types(cls)
    except Exception as exc:  # any failure to evaluate an annotation: NameError, TypeError…
        raise _Unsupported(
            f"the type hints of {cls.__qualname__} cannot be resolved ({exc}); define the "
            "classes it uses at module level"
        ) from exc
    properties: dict[str, Any] = {}
    required: list[str] = []
    for field in attrs.fields(cls):
        if not field.init:
            continue
        try:
            schema = _type_schema(field.type, (*seen, cls))
        except _Unsupported as exc:
            raise _Unsupported(f"{cls.__qualname__}.{field.name}: {exc}") from None
        description = field.metadata.get("description")
        if isinstance(description, str) and description:
            schema["description"] = description
        has_default, default = _describe_default(field)
        if has_default:
            schema["default"] = default
        elif field.default is attrs.NOTHING:
            required.append(field.name)
        properties[field.name] = schema
    return {
        "title": cls.__name__,
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def _type_schema(tp: Any, seen: tuple[type[Any], ...]) -> dict[str, Any]:
    """The JSON Schema of values of ``tp``; raises :class:`_Unsupported` for a type without one
    that :func:`_converter` structures strictly."""
    if tp is Any:
        return {}
    scalar = {str: "string", bool: "boolean", int: "integer", float: "number"}.get(tp)
    if scalar is not None:
        return {"type": scalar}
    inner = _optional_of(tp)
    if inner is not None:
        return {"anyOf": [_type_schema(inner, seen), {"type": "null"}]}
    if _is_choice(tp):
        values = _enum_values(tp)
        if not values or not all(v is None or isinstance(v, str | int) for v in values):
            raise _Unsupported(f"{tp!r}: only strings, integers, booleans and None can be choices")
        return {"enum": values}
    if attrs.has(tp):
        return _class_schema(tp, seen)
    args = typing.get_args(tp)
    if is_sequence(tp) and typing.get_origin(tp) in (None, list, tuple, Sequence):
        if typing.get_origin(tp) is tuple and (len(args) != 2 or args[1] is not Ellipsis):
            raise _Unsupported(f"{tp!r}: use tuple[X, ...] for an array")
        return {"type": "array", "items": _type_schema(args[0], seen) if args else {}}
    if is_mapping(tp) and typing.get_origin(tp) in (None, dict, Mapping):
        if args and args[0] is not str:
            raise _Unsupported(f"{tp!r}: a mapping's keys must be strings")
        return {
            "type": "object",
            "additionalProperties": _type_schema(args[1], seen) if args else {},
        }
    raise _Unsupported(
        f"{tp!r} has no JSON form the registry knows; use str, int, float, bool, Any, "
        "X | None, Literal, an Enum, list[X], tuple[X, ...], Sequence[X], dict[str, X], "
        "Mapping[str, X] or another attrs class"
    )


def _strict_scalar(kind: str) -> Callable[[Any, Any], Any]:
    def structure(value: Any, _: Any) -> Any:
        try:
            result = _as_type(kind, value)
        except _WrongType as exc:
            raise TypeError(str(exc)) from None
        if kind != "number":
            return result
        try:
            return float(result)
        except OverflowError:
            raise ValueError(f"{result} is too large for a floating-point number") from None

    return structure


def _strict_choice(tp: Any) -> Callable[[Any, Any], Any]:
    values = _enum_values(tp)

    def structure(value: Any, _: Any) -> Any:
        for choice in values:
            if _same_json(choice, value):
                return tp(choice) if _is_enum(tp) else choice
        shown = ", ".join(json.dumps(choice) for choice in values)
        raise ValueError(f"expected one of {shown}, got {_shown(value)}")

    return structure


def _strict_sequence(tp: Any, conv: cattrs.Converter) -> Callable[[Any, Any], Any]:
    if typing.get_origin(tp) in (None, list):
        inner = list_structure_factory(tp, conv)
    else:
        inner = homogenous_tuple_structure_factory(tp, conv)

    def structure(value: Any, target: Any) -> Any:
        if not isinstance(value, list | tuple):
            raise TypeError(f"expected array, got {_json_type(value)}")
        return inner(value, target)

    return structure


def _strict_mapping(tp: Any, conv: cattrs.Converter) -> Callable[[Any, Any], Any]:
    inner = mapping_structure_factory(tp, conv)

    def structure(value: Any, target: Any) -> Any:
        if not isinstance(value, Mapping):
            raise TypeError(f"expected object, got {_json_type(value)}")
        return inner(value, target)

    return structure


def _strict_class(cls: type[Any], conv: cattrs.Converter) -> Callable[[Any, Any], Any]:
    inner = make_dict_structure_fn(cls, conv)

    def structure(value: Any, target: Any) -> Any:
        if not isinstance(value, Mapping):
            raise TypeError(f"expected object, got {_json_type(value)}")
        return inner(value, target)

    return structure


@functools.cache
def _converter() -> cattrs.Converter:
    """The one converter for attrs parameter classes: unknown keys refused, no type converted
    into another. Only the types :func:`_type_schema` accepts ever reach it."""
    conv = cattrs.Converter(forbid_extra_keys=True)
    for tp, kind in ((str, "string"), (bool, "boolean"), (int, "integer"), (float, "number")):
        conv.register_structure_hook(tp, _strict_scalar(kind))
    conv.register_structure_hook_factory(is_sequence, _strict_sequence)
    conv.register_structure_hook_factory(is_mapping, _strict_mapping)
    conv.register_structure_hook_factory(_is_choice, _strict_choice)
    conv.register_structure_hook_factory(attrs.has, _strict_class)
    return conv


_INPUT_ERRORS: Final = (TypeError, ValueError, KeyError, cattrs.ForbiddenExtraKeysError)
"""What a bad input raises while structuring: the strict hooks' errors, a missing key, an
unknown key, and attrs validators' errors (``TypeError`` and ``ValueError`` by convention)."""


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _join(path: str, key: object) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _problems(exc: BaseException, path: str) -> Iterator[str]:
    """One message per bad field in a cattrs error tree, each led by the field's path."""
    if isinstance(exc, cattrs.ClassValidationError | cattrs.IterableValidationError):
        with_notes, without_notes = exc.group_exceptions()
        for inner, note in with_notes:
            key = note.name if isinstance(note, cattrs.AttributeValidationNote) else note.index
            yield from _problems(inner, _join(path, key))
        for inner in without_notes:
            yield from _problems(inner, path)
    elif isinstance(exc, cattrs.ForbiddenExtraKeysError):
        yield from (f"{_join(path, key)}: unknown field" for key in sorted(exc.extra_fields))
    elif isinstance(exc, KeyError):
        yield f"{path}: missing required field"
    else:
        yield f"{path}: {exc}" if path else str(exc)


# --------------------------------------------------------------------------------------------
# Actions
# --------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ActionContext:
    """What an action receives besides its parameters.

    ``idempotency_key`` is ``execution_id:event_id:step_id`` (plus a suffix for a compensation):
    the same for every retry and redelivery of the step, so a simple action can hand it to the
    outside system to make its effect happen once. ``attempt`` counts tries from 1.

    ``connection`` is set for a database action only: an open transaction at the action's
    isolation level, in which the executor also records the action's result. The action runs its
    statements on it and must neither commit nor roll it back.
    """

    idempotency_key: str
    execution_id: str
    tenant: str
    event_id: str
    step_id: str
    attempt: int = 1
    connection: sqlalchemy.engine.Connection | None = None


def _isolation(value: Isolation | str, action: str) -> Isolation:
    try:
        return Isolation.parse(value)
    except ActionRegistrationError as exc:
        raise ActionRegistrationError(f"action {action!r}: {exc}") from None


def _is_async(fn: object) -> bool:
    # an instance whose __call__ is async is awaited too, not only an async def
    call = getattr(fn, "__call__", None)  # noqa: B004 - not a callable() test
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


@attrs.frozen(kw_only=True)
class Action:
    """A registered action: its name, schema and function.

    ``kind`` is ``simple`` or ``database``; ``isolation`` is set for, and only for, a database
    action. Exactly one of ``params`` (a tuple of :class:`Param`) and ``params_class`` (an attrs
    class) is the schema. With ``additional_params``, a :class:`Param` schema also accepts
    fields it does not declare and passes them on unchecked (for an action such as one that
    records whatever it is given). ``is_async`` says whether ``fn`` must be awaited; it is
    detected from ``fn`` unless given.

    Construction checks everything and raises :class:`ActionRegistrationError` with the action's
    name: a bad name (letters, digits, ``_``, ``.``, ``-``, starting with a letter), kind or
    isolation level, no schema or two, a ``params_class`` that is not an attrs class or has a
    field of a type without a JSON form, a ``fn`` that cannot be called as ``fn(params, ctx)``.
    ``params`` may be given as a list of :class:`Param` or mappings and ``isolation`` as a
    string; both are normalised.

    ``breaker`` is the action's circuit breaker policy, or ``None`` (the default) for no
    breaker. With one, the executor stops calling the action, in every worker, once it has
    failed ``breaker.failures`` times in a row, and tries again with one trial call after
    ``breaker.reset_after`` seconds (see :mod:`ledgerflow.breakers`). A breaker that is not a
    :class:`~ledgerflow.breakers.BreakerPolicy` raises :class:`ActionRegistrationError`.

    ``checkpoint`` (the default) records a simple action's result in a transaction of its
    own as soon as it returns: once it has succeeded it never runs again under its key, not
    even after a crash before the transition's events commit. ``checkpoint=False``, for
    quick actions that may run twice (pure computations, calls the outside system
    deduplicates by the key handed to them), records the result in the transaction that
    commits the event whose transition ran it: no transaction per step, and a crash before
    that commit runs it again (at least once, as is every simple action's promise), so a
    checkpointed step that used its result may have used one the rerun does not give again.
    After that commit it never runs again, and the ledger and the recorded result agree. A
    database action is always checkpointed: its effect and result commit together
    (``checkpoint=False`` with ``isolation`` raises :class:`ActionRegistrationError`).
    """

    name: str
    description: str = ""
    kind: ActionKind = "simple"
    isolation: Isolation | None = None
    params: tuple[Param, ...] | None = None
    params_class: type | None = None
    additional_params: bool = False
    fn: Callable[..., Any]
    breaker: BreakerPolicy | None = None
    checkpoint: bool = True
    is_async: bool = attrs.field(
        default=attrs.Factory(lambda self: _is_async(self.fn), takes_self=True)
    )
    _schema: dict[str, Any] = attrs.field(init=False, repr=False, eq=False)
    _structure: Callable[[Any, Any], Any] | None = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        name = self.name
        if not isinstance(name, str) or not name:
            raise ActionRegistrationError(f"an action needs a non-empty name, not {name!r}")
        if not _NAME.match(name):
            raise ActionRegistrationError(
                f"invalid action name {name!r}: use letters, digits, '_', '.' and '-', "
                "starting with a letter"
            )
        if not isinstance(self.description, str):
            raise ActionRegistrationError(f"action {name!r}: description must be a string")
        if self.kind not in _KINDS:
            raise ActionRegistrationError(
                f"action {name!r}: unknown kind {self.kind!r}; use simple or database"
            )
        self._check_isolation()
        self._check_fn()
        if self.breaker is not None and not isinstance(self.breaker, BreakerPolicy):
            raise ActionRegistrationError(
                f"action {name!r}: breaker must be a BreakerPolicy or None, "
                f"not {type(self.breaker).__name__}"
            )
        if not isinstance(self.checkpoint, bool):
            raise ActionRegistrationError(f"action {name!r}: checkpoint must be true or false")
        if not self.checkpoint and self.kind == "database":
            raise ActionRegistrationError(
                f"action {name!r}: a database action is always checkpointed (its effect and "
                "its result commit together); checkpoint=False is for simple actions"
            )
        if (self.params is None) == (self.params_class is None):
            raise ActionRegistrationError(
                f"action {name!r}: give exactly one schema: params (a list of Param) or "
                "params_class (an attrs class)"
            )
        if not isinstance(self.additional_params, bool):
            raise ActionRegistrationError(
                f"action {name!r}: additional_params must be true or false"
            )
        if self.additional_params and self.params_class is not None:
            raise ActionRegistrationError(
                f"action {name!r}: additional_params needs a list of Param; an attrs class "
                "refuses fields it does not declare"
            )
        if self.params is not None:
            params = _params(self.params, name)
            object.__setattr__(self, "params", params)
            object.__setattr__(self, "_schema", _params_schema(params, self.additional_params))
            object.__setattr__(self, "_structure", None)
        else:
            self._compile_class(self.params_class)

    def _check_isolation(self) -> None:
        if self.kind == "simple":
            if self.isolation is not None:
                raise ActionRegistrationError(
                    f"action {self.name!r}: only a database action has an isolation level"
                )
            return
        if self.isolation is None:
            raise ActionRegistrationError(
                f"action {self.name!r}: a database action needs an isolation level"
            )
        object.__setattr__(self, "isolation", _isolation(self.isolation, self.name))

    def _check_fn(self) -> None:
        fn = self.fn
        if not callable(fn):
            raise ActionRegistrationError(
                f"action {self.name!r}: fn must be callable, not {type(fn).__name__}"
            )
        if inspect.iscoroutinefunction(fn) and not self.is_async:
            raise ActionRegistrationError(
                f"action {self.name!r}: fn is an async function but is_async is false"
            )
        try:
            signature = inspect.signature(fn)
        except (TypeError, ValueError):
            return  # some builtins have no signature: nothing to check against
        try:
            signature.bind(None, None)
        except TypeError:
            label = getattr(fn, "__qualname__", type(fn).__qualname__)
            raise ActionRegistrationError(
                f"action {self.name!r}: {label}{signature} cannot be called as fn(params, ctx); "
                "an action function takes two positional arguments"
            ) from None

    def _compile_class(self, cls: object) -> None:
        if not (isinstance(cls, type) and attrs.has(cls)):
            shown = cls.__qualname__ if isinstance(cls, type) else repr(cls)
            raise ActionRegistrationError(
                f"action {self.name!r}: params must be an attrs class (or None for an action "
                f"without parameters), not {shown}"
            )
        try:
            schema = _class_schema(cls, ())
        except _Unsupported as exc:
            raise ActionRegistrationError(f"action {self.name!r}: {exc}") from None
        object.__setattr__(self, "_schema", {"$schema": JSON_SCHEMA_DIALECT, **schema})
        # build the hook now, so the first validation in a busy worker builds nothing
        object.__setattr__(self, "_structure", _converter().get_structure_hook(cls))

    def validate(self, params: Mapping[str, JSON]) -> Any:
        """The parameters ``params`` after checking them against the schema: a ``dict`` with
        defaults filled in for a :class:`Param` schema, an instance of ``params_class`` for an
        attrs schema.

        Raises :class:`InvalidParametersError` naming every bad field at once, each as
        ``path: what is wrong`` (``amount: expected number, got string``, ``user: missing
        required field``, ``colour: unknown field``); nested fields have dotted paths and list
        items ``[index]``.
        """
        if not isinstance(params, Mapping):
            raise InvalidParametersError(
                self.name, [f"expected an object of parameters, got {_json_type(params)}"]
            )
        if self._structure is None:
            assert self.params is not None
            result = _validate_params(self.params, params, self.additional_params)
            if isinstance(result, list):
                raise InvalidParametersError(self.name, result)
            return result
        try:
            return self._structure(params, self.params_class)
        except cattrs.BaseValidationError as exc:
            if not all(isinstance(leaf, _INPUT_ERRORS) for leaf in _leaves(exc)):
                raise  # a bug in the class's own code, not bad input: show it as it is
            raise InvalidParametersError(self.name, list(_problems(exc, ""))) from exc

    def json_schema(self) -> dict[str, Any]:
        """A JSON Schema (draft 2020-12) of the parameters; a fresh copy the caller may change.

        Every mapping that :meth:`validate` accepts satisfies it. A field with a default lists
        it under ``default``; unknown fields are refused (``additionalProperties: false``).
        """
        return copy.deepcopy(self._schema)


def _first_line(fn: Callable[..., Any]) -> str:
    doc = inspect.getdoc(fn)
    if not doc:
        return ""
    return doc.strip().splitlines()[0].strip()


class ActionRegistry:
    """The actions an engine knows, by name.

    Names are unique: registering a name twice is an error, never an override. Lookups and
    registrations may come from any thread. Iteration yields names in sorted order.
    """

    def __init__(self) -> None:
        self._actions: dict[str, Action] = {}
        self._lock = threading.Lock()

    def register(self, action: Action) -> Action:
        """Add ``action`` and return it.

        Raises :class:`ActionRegistrationError` if its name is already registered.
        """
        if not isinstance(action, Action):
            raise ActionRegistrationError(f"expected an Action, got {type(action).__name__}")
        with self._lock:
            if action.name in self._actions:
                raise ActionRegistrationError(
                    f"action {action.name!r} is already registered; action names must be unique"
                )
            self._actions[action.name] = action
        return action

    def register_simple_action(
        self,
        name: str,
        description: str,
        params: Sequence[Param | Mapping[str, Any]],
        fn: Callable[..., Any],
        *,
        additional_params: bool = False,
        breaker: BreakerPolicy | None = None,
        checkpoint: bool = True,
    ) -> Action:
        """Register ``fn`` as a simple action, run at least once per idempotency key.

        ``params`` lists its parameters, as :class:`Param` or mappings of the same keys
        (``{"name": "userId", "type": "string", "required": True}``); with
        ``additional_params``, fields not listed are accepted too and passed on unchecked.
        ``breaker`` gives the action a circuit breaker shared by every worker (none by
        default; see :class:`Action`). ``checkpoint=False`` records its result with the
        event's commit instead of in a transaction of its own (see :class:`Action`). Raises
        :class:`ActionRegistrationError` as :class:`Action` and :meth:`register` do.
        """
        return self.register(
            Action(
                name=name,
                description=description,
                kind="simple",
                params=_params(params, str(name)),
                additional_params=additional_params,
                fn=fn,
                breaker=breaker,
                checkpoint=checkpoint,
            )
        )

    def register_database_action(
        self,
        name: str,
        description: str,
        params: Sequence[Param | Mapping[str, Any]],
        isolation: Isolation | str,
        fn: Callable[..., Any],
        *,
        additional_params: bool = False,
        breaker: BreakerPolicy | None = None,
    ) -> Action:
        """Register ``fn`` as a database action, run in a transaction at ``isolation`` that also
        records its result: exactly once per idempotency key.

        ``isolation`` is an :class:`Isolation` or its value (``"SERIALIZABLE"``);
        ``params``, ``additional_params`` and ``breaker`` are as for
        :meth:`register_simple_action`. Raises :class:`ActionRegistrationError` as
        :class:`Action` and :meth:`register` do.
        """
        return self.register(
            Action(
                name=name,
                description=description,
                kind="database",
                isolation=_isolation(isolation, str(name)),
                params=_params(params, str(name)),
                additional_params=additional_params,
                fn=fn,
                breaker=breaker,
            )
        )

    def action(
        self,
        name: str | None = None,
        *,
        description: str | None = None,
        params: type | None = None,
        isolation: Isolation | str | None = None,
        additional_params: bool = False,
        breaker: BreakerPolicy | None = None,
        checkpoint: bool = True,
    ) -> Callable[[F], F]:
        """A decorator that registers the function it decorates and returns it unchanged.

        ``name`` defaults to the function's ``__name__``, ``description`` to the first line of
        its docstring. ``params`` is an attrs class, the schema, or ``None`` for an action that
        takes no parameters (with ``additional_params``: no declared parameters, any given
        passed on unchecked). With ``isolation`` the action is a database action, without it a
        simple one. ``breaker`` gives it a circuit breaker shared by every worker (none by
        default; see :class:`Action`); ``checkpoint=False`` records a simple action's result
        with the event's commit (see :class:`Action`). Raises :class:`ActionRegistrationError` as
        :class:`Action` and :meth:`register` do::

            @registry.action("billing.charge", params=Charge, isolation="SERIALIZABLE")
            def charge(params: Charge, ctx: ActionContext) -> dict[str, Any]: ...
        """
        if callable(name):
            raise ActionRegistrationError(
                "use the action decorator with parentheses: @registry.action()"
            )

        def register(fn: F) -> F:
            action_name = getattr(fn, "__name__", "") if name is None else name
            self.register(
                Action(
                    name=action_name,
                    description=_first_line(fn) if description is None else description,
                    kind="simple" if isolation is None else "database",
                    isolation=None if isolation is None else _isolation(isolation, action_name),
                    params=() if params is None else None,
                    params_class=params,
                    additional_params=additional_params,
                    fn=fn,
                    breaker=breaker,
                    checkpoint=checkpoint,
                )
            )
            return fn

        return register

    def get(self, name: str) -> Action:
        """The action registered as ``name``; raises :class:`UnknownActionError` if none is."""
        try:
            return self._actions[name]
        except (KeyError, TypeError):
            raise UnknownActionError(name) from None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._actions

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            return iter(sorted(self._actions))

    def __len__(self) -> int:
        return len(self._actions)

    def __repr__(self) -> str:
        return f"<ActionRegistry: {len(self)} actions>"

    def describe(self) -> list[dict[str, Any]]:
        """Every action, sorted by name, as plain JSON values: ``name``, ``description``,
        ``kind``, ``isolation`` (its value, or ``None``), ``async``, ``breaker`` (the policy's
        ``failures``, ``reset_after`` and ``when_open``, or ``None``), ``checkpoint`` (whether
        its result is recorded as soon as it returns) and ``parameters`` (the
        JSON Schema of :meth:`Action.json_schema`). This is what ``ledgerflow actions --json``
        prints.
        """
        with self._lock:
            actions = sorted(self._actions.values(), key=lambda a: a.name)
        return [
            {
                "name": action.name,
                "description": action.description,
                "kind": action.kind,
                "isolation": None if action.isolation is None else action.isolation.value,
                "async": action.is_async,
                "breaker": None if action.breaker is None else action.breaker.describe(),
                "checkpoint": action.checkpoint,
                "parameters": action.json_schema(),
            }
            for action in actions
        ]
