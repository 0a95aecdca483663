"""Conditions and parameter mappings in CEL, the Common Expression Language.

CEL is small, side-effect free and always terminates: no loops beyond bounded macros, no I/O,
no clock, no access to Python objects. Expressions are compiled once, when a definition loads,
by Google's CEL runtime (``cel-expr-python``) and evaluated many times, from any thread.

The names an expression can use are :data:`NAMES`; a name outside them is refused at compile
time, so a typo such as ``paylod.total`` fails validation rather than an execution. Comparisons
across ``int`` and ``double`` follow the CEL specification (``1 == 1.0`` and ``1.5 < 2`` hold).
Results are plain JSON values; an expression whose result has no JSON form (a timestamp, bytes)
fails with :class:`~ledgerflow.errors.ExpressionError`; convert it with ``string(…)``.

Evaluation is bounded: at most 9,999 comprehension iterations (``map``, ``all``, ``exists``…)
per evaluation and nesting at most 32 deep, so no payload can make a condition run for long.
Strings holding the NUL character are refused as inputs (the runtime would cut them short).
"""

from __future__ import annotations

import functools
import math
import re
import threading
from collections.abc import Mapping
from typing import Any, Final

import attrs
import cel_expr_python.cel as cel

from ledgerflow.errors import ExpressionError
from ledgerflow.json_values import holds_nul
from ledgerflow.model import JSON

__all__ = [
    "NAMES",
    "Expression",
    "Template",
    "compile_expression",
    "compile_template",
    "is_expression",
]

NAMES: Final = ("payload", "context", "role", "event", "state", "steps", "execution")
"""The variables an expression may read. ``payload``: the event's payload; ``context``: the
execution's context; ``role``: the sender's role (``null`` if none); ``event``: the event's name;
``state``: the current state's name; ``steps``: in step parameters, the earlier steps of the
transition (``steps.<id>.result``); ``execution``: in step parameters, the execution's ``id`` and
``tenant``. A variable not provided to an evaluation is an evaluation error where read."""

_lock = threading.Lock()
_CEL_ERROR = re.compile(r"ERROR: <input>:(\d+):(\d+): ([^\n]*)")


@functools.cache
def _environment() -> cel.Env:
    with _lock:
        return cel.NewEnv(variables=dict.fromkeys(NAMES, cel.Type.DYN))


def _compile_error(source: str, raw: str) -> ExpressionError:
    match = _CEL_ERROR.search(raw)
    if match is None:
        return ExpressionError(" ".join(raw.split()), source=source)
    line, column, text = match.groups()
    text = text.removesuffix(" (in container '')")
    if text.startswith("undeclared reference"):
        text += f"; expressions may use {', '.join(NAMES)}"
    return ExpressionError(f"line {line}, column {column}: {text}", source=source)


@attrs.frozen(eq=False)
class Expression:
    """A compiled CEL expression. Evaluating it is pure: the same variables give the same
    result."""

    source: str
    _program: cel.Expression = attrs.field(repr=False)

    def evaluate(self, variables: Mapping[str, Any]) -> JSON:
        """The expression's value over ``variables`` (JSON values), as a plain JSON value.

        Raises :class:`ExpressionError` when evaluation fails: a missing key, a type mismatch,
        an overflow, a division by zero, or a result with no JSON form.
        """
        _refuse_nul(variables, self.source)
        try:
            value = self._program.eval(data=dict(variables))
        except (RuntimeError, TypeError, ValueError) as exc:  # inputs CEL cannot represent
            raise ExpressionError(" ".join(str(exc).split()), source=self.source) from exc
        if value.type() == cel.Type.ERROR:
            raise ExpressionError(str(value.value()), source=self.source)
        return _to_json(value.plain_value(), self.source)

    def test(self, variables: Mapping[str, Any]) -> bool:
        """Whether the expression, a condition, holds over ``variables``.

        Raises :class:`ExpressionError` if evaluation fails or the value is not a boolean.
        """
        value = self.evaluate(variables)
        if not isinstance(value, bool):
            raise ExpressionError(
                f"a condition must be true or false, not {_json_type(value)}", source=self.source
            )
        return value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Expression) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)


def compile_expression(source: str) -> Expression:
    """Compile ``source`` once, for evaluation any number of times.

    Raises :class:`ExpressionError` for a syntax error or a name outside :data:`NAMES`, with
    the line and column.
    """
    if not isinstance(source, str) or not source.strip():
        raise ExpressionError("an expression cannot be empty", source=str(source))
    env = _environment()
    try:
        # The type checker finds undeclared names, but also refuses mixed int/double
        # arithmetic that CEL's runtime allows; keep only what it says about names.
        env.compile(source)
    except RuntimeError as exc:
        if "undeclared reference" in str(exc) or "Syntax error" in str(exc):
            raise _compile_error(source, str(exc)) from None
    try:
        program = env.compile(source, disable_check=True)
    except RuntimeError as exc:
        raise _compile_error(source, str(exc)) from None
    return Expression(source, program)


def _refuse_nul(value: Any, source: str) -> None:
    # The runtime reads input strings as C strings and would silently cut them at a NUL:
    # refuse rather than evaluate over data that is not what was sent.
    if holds_nul(value):
        raise ExpressionError(
            "a string holding the NUL character (\\u0000) cannot be passed to an expression",
            source=source,
        )


def _json_type(value: object) -> str:
    return {
        type(None): "null",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a map",
    }.get(type(value), type(value).__name__)


def _to_json(value: Any, source: str) -> JSON:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ExpressionError(f"the result {value} is not a finite number", source=source)
        return value
    if isinstance(value, list | tuple):
        return [_to_json(item, source) for item in value]
    if isinstance(value, Mapping):
        result: dict[str, JSON] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ExpressionError(
                    f"map keys must be strings to be JSON, found {_json_type(key)}", source=source
                )
            result[key] = _to_json(item, source)
        return result
    raise ExpressionError(
        f"the result is a {type(value).__name__}, which has no JSON form; convert it with "
        "string(...)",
        source=source,
    )


# --------------------------------------------------------------------------------------------
# Templates: JSON values with expressions inside
# --------------------------------------------------------------------------------------------


def is_expression(value: JSON) -> bool:
    """Whether ``value`` is an expression node: a mapping whose only key is ``expr``."""
    return isinstance(value, Mapping) and len(value) == 1 and "expr" in value


@attrs.frozen(eq=False)
class Template:
    """A JSON value in which ``{expr: …}`` nodes, at any depth, are compiled expressions."""

    _value: Any = attrs.field(repr=False)
    expressions: tuple[Expression, ...]

    def render(self, variables: Mapping[str, Any]) -> JSON:
        """The value with every expression replaced by its result over ``variables``.

        Raises :class:`ExpressionError` from the first expression that fails.
        """
        if not self.expressions:
            return self._value
        return _render(self._value, variables)


def _render(node: Any, variables: Mapping[str, Any]) -> JSON:
    if isinstance(node, Expression):
        return node.evaluate(variables)
    if isinstance(node, dict):
        return {key: _render(item, variables) for key, item in node.items()}
    if isinstance(node, list):
        return [_render(item, variables) for item in node]
    return node


def compile_template(value: JSON) -> Template:
    """Compile every ``{expr: …}`` node of ``value``; other values are kept literally.

    Raises :class:`ExpressionError` for the first node that does not compile, or an ``expr``
    that is not a string.
    """
    found: list[Expression] = []

    def walk(node: JSON) -> Any:
        if is_expression(node):
            source = node["expr"]
            if not isinstance(source, str):
                raise ExpressionError(
                    f"'expr' must be a string, not {_json_type(source)}", source=repr(source)
                )
            expression = compile_expression(source)
            found.append(expression)
            return expression
        if isinstance(node, Mapping):
            return {str(key): walk(item) for key, item in node.items()}
        if isinstance(node, list | tuple):
            return [walk(item) for item in node]
        return node

    compiled = walk(value)
    return Template(compiled if found else value, tuple(found))
