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

Plugins add functions with :func:`register_functions` (see :class:`ExpressionFunction`); every
later compile can call them.
"""

from __future__ import annotations

import datetime
import inspect
import math
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import attrs
import cel_expr_python.cel as cel

from ledgerflow.errors import ExpressionError
from ledgerflow.json_values import holds_nul
from ledgerflow.model import JSON

__all__ = [
    "NAMES",
    "TYPES",
    "Expression",
    "ExpressionFunction",
    "Template",
    "as_moment",
    "compile_expression",
    "compile_template",
    "is_expression",
    "register_functions",
    "registered_functions",
    "reset_functions",
]

NAMES: Final = ("payload", "context", "role", "event", "state", "steps", "execution")
"""The variables an expression may read. ``payload``: the event's payload; ``context``: the
execution's context; ``role``: the sender's role (``null`` if none); ``event``: the event's name;
``state``: the current state's name; ``steps``: in step parameters, the earlier steps of the
transition (``steps.<id>.result``); ``execution``: in step parameters, the execution's ``id`` and
``tenant``. A variable not provided to an evaluation is an evaluation error where read."""

_CEL_ERROR = re.compile(r"ERROR: <input>:(\d+):(\d+): ([^\n]*)")
_UNDECLARED = re.compile(r"undeclared reference to '([^']*)'")
_NO_OVERLOAD = re.compile(r"found no matching overload for '([^']*)'")
_NO_MATCH_AT_RUN = re.compile(r"No matching overloads found : ([\w.]+)\(")


@attrs.frozen
class _Environment:
    """A CEL environment and the functions declared in it, replaced as a whole when functions
    are registered, so a compile sees one consistent pair."""

    env: cel.Env
    functions: Mapping[str, ExpressionFunction]


# _lock guards _functions and _current. Both are replaced, never changed in place: a compile
# running while functions are registered keeps the environment it started with.
_lock = threading.Lock()
_functions: dict[str, ExpressionFunction] = {}
_current: _Environment | None = None


def _new_env(functions: Iterable[ExpressionFunction]) -> cel.Env:
    return cel.NewEnv(
        variables=dict.fromkeys(NAMES, cel.Type.DYN),
        functions=[function._declaration() for function in functions],
    )


def _environment() -> _Environment:
    global _current
    current = _current
    if current is not None:
        return current
    with _lock:
        if _current is None:
            _current = _Environment(_new_env(_functions.values()), _functions)
        return _current


def _compile_error(source: str, raw: str) -> ExpressionError:
    match = _CEL_ERROR.search(raw)
    if match is None:
        return ExpressionError(" ".join(raw.split()), source=source)
    line, column, text = match.groups()
    return _positioned(source, line, column, text.removesuffix(" (in container '')"), {})


def _checker_error(
    source: str, raw: str, functions: Mapping[str, ExpressionFunction]
) -> ExpressionError | None:
    # The first error the runtime would agree with: a syntax error, an unknown name, a call
    # of a registered function that cannot match. The checker's other complaints (1 == 1.0)
    # are about things the runtime allows.
    for match in _CEL_ERROR.finditer(raw):
        line, column, text = match.groups()
        text = text.removesuffix(" (in container '')")
        overload = _NO_OVERLOAD.match(text)
        if text.startswith(("Syntax error", "undeclared reference")) or (
            overload is not None and overload.group(1) in functions
        ):
            return _positioned(source, line, column, text, functions)
    return None


def _positioned(
    source: str, line: str, column: str, text: str, functions: Mapping[str, ExpressionFunction]
) -> ExpressionError:
    undeclared = _UNDECLARED.match(text)
    overload = _NO_OVERLOAD.match(text)
    if undeclared is not None:
        # A registered function called with the wrong number of arguments, or as a method,
        # is "undeclared" to the checker (a dotted one by its first segment).
        name = undeclared.group(1)
        called = [f for f in functions.values() if name in (f.name, f.name.split(".")[0])]
        if called:
            calls = " or ".join(f._call for f in called)
            text = "a function is called with the wrong number of arguments or as a method; "
            text += f"call it as {calls}"
        else:
            text += f"; expressions may use {', '.join(NAMES)}"
            if functions:
                text += f" and the functions {', '.join(sorted(functions))}"
    elif overload is not None and overload.group(1) in functions:
        text += f"; call it as {functions[overload.group(1)]._call}"
    return ExpressionError(f"line {line}, column {column}: {text}", source=source)


@attrs.frozen(eq=False)
class Expression:
    """A compiled CEL expression. Evaluating it is pure: the same variables give the same
    result."""

    source: str
    _program: cel.Expression = attrs.field(repr=False)
    # The registered functions it was compiled with, to explain a call that does not match.
    _functions: Mapping[str, ExpressionFunction] = attrs.field(repr=False, factory=dict)

    def evaluate(self, variables: Mapping[str, Any]) -> JSON:
        """The expression's value over ``variables`` (JSON values), as a plain JSON value.

        Raises :class:`ExpressionError` when evaluation fails: a missing key, a type mismatch,
        an overflow, a division by zero, a result with no JSON form, or a registered function
        that fails (see :class:`ExpressionFunction`).
        """
        _refuse_nul(variables, self.source)
        try:
            value = self._program.eval(data=dict(variables))
        except (RuntimeError, TypeError, ValueError) as exc:  # inputs CEL cannot represent
            _raise_interruption()
            raise ExpressionError(" ".join(str(exc).split()), source=self.source) from exc
        _raise_interruption()
        if value.type() == cel.Type.ERROR:
            message = str(value.value())
            unmatched = _NO_MATCH_AT_RUN.search(message)
            if unmatched is not None and unmatched.group(1) in self._functions:
                message += f"; call it as {self._functions[unmatched.group(1)]._call}"
            raise ExpressionError(message, source=self.source)
        return _to_json(value.plain_value(), self.source)

    def moment(self, variables: Mapping[str, Any]) -> float | None:
        """The point in time the expression gives over ``variables``, in seconds since the
        epoch, or ``None`` for ``null``. A timestamp, an ISO 8601 string (UTC unless it says
        otherwise) and a number of seconds since the epoch are times.

        Raises :class:`ExpressionError` if evaluation fails or the value is none of those.
        """
        _refuse_nul(variables, self.source)
        try:
            value = self._program.eval(data=dict(variables))
        except (RuntimeError, TypeError, ValueError) as exc:
            _raise_interruption()
            raise ExpressionError(" ".join(str(exc).split()), source=self.source) from exc
        _raise_interruption()
        if value.type() == cel.Type.ERROR:
            raise ExpressionError(str(value.value()), source=self.source)
        return as_moment(value.plain_value(), self.source)

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

    Raises :class:`ExpressionError`, with the line and column, for a syntax error, a name
    outside :data:`NAMES` and the registered functions, or a registered function called with
    the wrong number of arguments or with arguments whose types are known here and do not fit
    (a literal, say; an argument read from ``payload`` is checked when evaluated).
    """
    if not isinstance(source, str) or not source.strip():
        raise ExpressionError("an expression cannot be empty", source=str(source))
    environment = _environment()
    try:
        # The type checker finds undeclared names, but also refuses mixed int/double
        # arithmetic that CEL's runtime allows; keep only what it says about names, syntax and
        # registered functions (whose overloads the runtime would not match either).
        environment.env.compile(source)
    except RuntimeError as exc:
        error = _checker_error(source, str(exc), environment.functions)
        if error is not None:
            raise error from None
    try:
        program = environment.env.compile(source, disable_check=True)
    except RuntimeError as exc:
        raise _compile_error(source, str(exc)) from None
    return Expression(source, program, environment.functions)


# the seconds since the epoch that a datetime can show: from the year 1 to 9999
_EPOCH_RANGE = (-62135596800.0, 253402300799.0)


def as_moment(value: Any, source: str = "") -> float | None:
    """``value`` as seconds since the epoch, or ``None`` for ``None``: a datetime, an ISO 8601
    string (UTC unless it says otherwise) or a number of seconds since the epoch. Raises
    :class:`ExpressionError` for anything else."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.datetime.fromisoformat(value)
        except ValueError:
            raise ExpressionError(f"{value!r} is not an ISO 8601 time", source=source) from None
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.UTC)
        return float(value.timestamp())
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not _EPOCH_RANGE[0] <= value <= _EPOCH_RANGE[1]:
            raise ExpressionError(
                f"{str(value)[:40]} seconds since the epoch is not a time between the years 1 "
                "and 9999",
                source=source,
            )
        return float(value)
    raise ExpressionError(
        f"a time must be a timestamp, an ISO 8601 string or seconds since the epoch, "
        f"not {_json_type(value)}",
        source=source,
    )


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
        datetime.datetime: "a timestamp",
        datetime.timedelta: "a duration",
        bytes: "bytes",
        bytearray: "bytes",
        cel.Type: "a type",
    }.get(type(value), f"a Python {type(value).__name__}")


class _NoJSONForm(ValueError):
    """A value, or a value inside it (``nested``), that JSON cannot hold; ``problem`` completes
    "the result is …"."""

    def __init__(self, problem: str, *, nested: bool, convertible: bool) -> None:
        super().__init__(problem)
        self.problem = problem
        self.nested = nested
        self.convertible = convertible

    def describe(self, subject: str) -> str:
        return f"{subject} {'holds' if self.nested else 'is'} {self.problem}"


def _as_json(value: Any, *, nested: bool = False) -> JSON:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _NoJSONForm(
                f"{value}, which is not a finite number", nested=nested, convertible=False
            )
        return value
    if isinstance(value, list | tuple):
        return [_as_json(item, nested=True) for item in value]
    if isinstance(value, Mapping):
        result: dict[str, JSON] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _NoJSONForm(
                    f"a map with {_json_type(key)} key; map keys must be strings to be JSON",
                    nested=nested,
                    convertible=False,
                )
            result[key] = _as_json(item, nested=True)
        return result
    raise _NoJSONForm(
        f"{_json_type(value)}, which has no JSON form", nested=nested, convertible=True
    )


def _to_json(value: Any, source: str) -> JSON:
    try:
        return _as_json(value)
    except _NoJSONForm as exc:
        hint = "; convert it with string(...)" if exc.convertible else ""
        raise ExpressionError(exc.describe("the result") + hint, source=source) from None


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


# --------------------------------------------------------------------------------------------
# Functions from plugins
# --------------------------------------------------------------------------------------------

TYPES: Final = ("dyn", "string", "int", "double", "bool", "list", "map")
"""The CEL type names an :class:`ExpressionFunction` may declare for a parameter or its result.
``dyn`` is any JSON value; ``list`` and ``map`` hold any values (a map's keys are strings)."""

# cel-expr-python 0.1.3 declares a DYN parameter but its runtime never matches one ("No
# matching overloads found : f(int64)"); google.protobuf.Any ("any") matches every value at
# run time and accepts every argument in the checker, so a dyn parameter is declared as any.
_PARAMETER_TYPES: Final = {
    "dyn": cel.Type("any"),
    "string": cel.Type.STRING,
    "int": cel.Type.INT,
    "double": cel.Type.DOUBLE,
    "bool": cel.Type.BOOL,
    "list": cel.Type.LIST,
    "map": cel.Type.MAP,
}
_RESULT_TYPES: Final = {**_PARAMETER_TYPES, "dyn": cel.Type.DYN}
_RESULT_CLASSES: Final[Mapping[str, type]] = {
    "string": str,
    "int": int,
    "double": float,
    "bool": bool,
    "list": list,
    "map": dict,
}
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The CEL specification's reserved words: an expression cannot call a function so named.
_RESERVED: Final = frozenset(
    {
        *("true", "false", "null", "in", "as", "break", "const", "continue", "else", "for"),
        *("function", "if", "import", "let", "loop", "package", "namespace", "return", "var"),
        *("void", "while"),
    }
)
_INT64: Final = range(-(2**63), 2**63)


def _type_names(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        raise TypeError(f"params must be a sequence of type names such as ('dyn',), not {value!r}")
    return tuple(value)


def _valid_name(function: ExpressionFunction, _: object, name: str) -> None:
    if not isinstance(name, str):
        raise TypeError(f"an expression function's name must be a string, not {name!r}")
    segments = name.split(".")
    if not all(_IDENTIFIER.fullmatch(segment) for segment in segments):
        raise ValueError(
            f"expression function name {name!r} is not a CEL name: letters, digits and _, not "
            "starting with a digit, optionally in dotted segments such as billing.vat"
        )
    reserved = [segment for segment in segments if segment in _RESERVED]
    if reserved:
        raise ValueError(
            f"expression function name {name!r}: {reserved[0]!r} is a reserved word in CEL"
        )
    if segments[0] in NAMES:
        raise ValueError(
            f"expression function name {name!r} starts with the variable {segments[0]!r}, so a "
            f"call would read as a method of {segments[0]!r}; choose another first segment"
        )


def _valid_params(function: ExpressionFunction, _: object, params: tuple[str, ...]) -> None:
    for number, type_name in enumerate(params, 1):
        _valid_type(function, f"parameter {number}", type_name)


def _valid_result(function: ExpressionFunction, _: object, result: str) -> None:
    _valid_type(function, "result", result)


def _valid_type(function: ExpressionFunction, what: str, type_name: object) -> None:
    if type_name not in TYPES:
        raise ValueError(
            f"expression function {function.name!r}: the {what} type {type_name!r} is not one "
            f"of {', '.join(TYPES)}"
        )


def _origin(fn: Callable[..., Any]) -> str:
    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__qualname__", None) or repr(fn)
    return f"{module}.{name}" if module else name


@attrs.frozen(kw_only=True)
class ExpressionFunction:
    """A Python function that expressions can call, as ``name(arguments…)``.

    ``name`` is a CEL name, optionally dotted (``billing.vat``); it cannot be a reserved word,
    the name of one of CEL's own functions or macros (``size``, ``int``, ``has``…), or start
    with a variable of :data:`NAMES`. ``params`` and ``result`` are CEL type names from
    :data:`TYPES`. ``fn`` is called with one plain JSON value per parameter (``None``,
    ``bool``, ``int``, ``float``, ``str``, ``list``, ``dict`` with string keys) and must return
    a JSON value of its declared result type (an ``int`` is accepted for ``double``).

    ``fn`` must be pure: the same arguments always give the same value, without I/O, clocks,
    randomness or state, because a ledger is replayed through the same expressions and must
    decide the same way every time.

    Calls are checked: an argument that has no JSON form (a timestamp, bytes), an exception
    raised by ``fn``, or a value it returns that is not JSON (``nan``, a set, an integer beyond
    64 bits, a string holding NUL) or not of its declared type, fails the evaluation with an
    :class:`~ledgerflow.errors.ExpressionError` naming the function. Such a failure is a CEL
    error value, so CEL's logic applies: ``f(x) || true`` is ``true``. A ``KeyboardInterrupt``
    or ``SystemExit`` raised in ``fn`` is raised again by :meth:`Expression.evaluate`, never
    turned into a result (the runtime alone would make it an error value).

    A name has one signature, called as ``f(x)``: CEL could also overload a name by argument
    types and declare methods (``x.f()``), which this does not offer. As CEL type-checks
    gradually, a wrong argument is refused when the expression compiles where its type is
    known then (a literal, another function's declared result), and at evaluation where it is
    read from ``payload`` or ``context`` ("No matching overloads found : f(int64)").

    Worked around in cel-expr-python 0.1.3: its runtime never matches a parameter declared
    ``dyn``, so a ``dyn`` parameter is declared as ``google.protobuf.Any``, which matches any
    value; an exception message holding a lone surrogate would crash the process, and one
    holding NUL would be cut short, so messages are escaped.
    """

    name: str = attrs.field(validator=_valid_name)
    fn: Callable[..., JSON] = attrs.field(validator=attrs.validators.is_callable())
    params: tuple[str, ...] = attrs.field(
        default=(), converter=_type_names, validator=_valid_params
    )
    result: str = attrs.field(default="dyn", validator=_valid_result)
    description: str = attrs.field(default="", validator=attrs.validators.instance_of(str))

    def __attrs_post_init__(self) -> None:
        try:
            signature = inspect.signature(self.fn)
        except (TypeError, ValueError):  # some built-in callables do not describe themselves
            return
        try:
            signature.bind(*self.params)
        except TypeError as exc:
            raise ValueError(
                f"expression function {self.name!r}: {_origin(self.fn)} cannot be called with "
                f"{len(self.params)} argument(s) ({', '.join(self.params)}): {exc}"
            ) from None

    @property
    def signature(self) -> str:
        """How expressions call it, and what it gives: ``billing.vat(double) -> double``."""
        return f"{self._call} -> {self.result}"

    @property
    def _call(self) -> str:
        return f"{self.name}({', '.join(self.params)})"

    def _declaration(self) -> cel.FunctionDecl:
        overload = cel.Overload(
            f"ledgerflow:{self.name}",
            return_type=_RESULT_TYPES[self.result],
            parameters=[_PARAMETER_TYPES[type_name] for type_name in self.params],
            impl=_calling(self),
        )
        return cel.FunctionDecl(self.name, [overload])


class _FunctionFailed(RuntimeError):
    """Raised inside a call from CEL: the runtime turns it into an error value carrying the
    message, which :meth:`Expression.evaluate` raises as an ExpressionError."""


# cel-expr-python turns a KeyboardInterrupt or SystemExit raised in a function into an error
# value ("ABORTED: …"), which would become a decision in the ledger: the call keeps it here,
# on the evaluating thread, and Expression.evaluate raises it again once the runtime returns.
_interrupted = threading.local()


def _raise_interruption() -> None:
    interrupted = _interrupted.__dict__.pop("exception", None)
    if interrupted is not None:
        raise interrupted


def _calling(function: ExpressionFunction) -> Callable[..., Any]:
    def call(*arguments: Any) -> Any:
        try:
            return _returned(function, function.fn(*_arguments(function, arguments)))
        except _FunctionFailed as exc:
            message = str(exc)
        except Exception as exc:
            message = f"{function.name} raised {type(exc).__name__}: {_text_of(exc)}"
        except BaseException as exc:
            _interrupted.exception = exc
            message = f"{function.name} was interrupted by {type(exc).__name__}"
        # The runtime cuts a message at NUL and crashes the process on a lone surrogate.
        text = message.encode("utf-8", "backslashreplace").decode().replace("\x00", "\\x00")
        raise _FunctionFailed(text) from None

    return call


def _text_of(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return "(its message cannot be printed)"


def _arguments(function: ExpressionFunction, arguments: tuple[Any, ...]) -> list[JSON]:
    values: list[JSON] = []
    for number, argument in enumerate(arguments, 1):
        try:
            values.append(_as_json(argument))
        except _NoJSONForm as exc:
            hint = "; convert it with string(...)" if exc.convertible else ""
            subject = f"argument {number} of {function.name}"
            raise _FunctionFailed(exc.describe(subject) + hint) from None
    return values


def _returned(function: ExpressionFunction, value: Any) -> JSON:
    subject = f"the value {function.name} returned"
    try:
        result = _as_json(value)
    except _NoJSONForm as exc:
        raise _FunctionFailed(exc.describe(subject)) from None
    unfit = _unfit_for_cel(result)
    if unfit is not None:
        raise _FunctionFailed(f"{subject} holds {unfit}")
    expected = _RESULT_CLASSES.get(function.result)
    if expected is float and isinstance(result, int) and not isinstance(result, bool):
        return float(result)
    if expected is not None and (
        not isinstance(result, expected) or isinstance(result, bool) is not (expected is bool)
    ):
        raise _FunctionFailed(
            f"{subject} is {_json_type(result)}, but it declares the result {function.result}"
        )
    return result


def _unfit_for_cel(value: JSON) -> str | None:
    # JSON, but not what CEL's runtime can carry: it would cut a string at NUL, fail on a lone
    # surrogate without saying where, and holds integers in 64 bits.
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if "\x00" in node:
                return "a string with the NUL character (\\u0000)"
            if not node.isascii():
                try:
                    node.encode()
                except UnicodeEncodeError:
                    return f"the string {node!r}, which is not valid Unicode"
        elif isinstance(node, int) and not isinstance(node, bool) and node not in _INT64:
            return f"{node}, beyond CEL's 64-bit integers"
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
    return None


def _refuse_clash_with_cel(function: ExpressionFunction) -> None:
    # CEL knows its own functions and macros: declare the function alone and let it refuse.
    try:
        _new_env([function]).compile("true")
    except RuntimeError as exc:
        reason = " ".join(str(exc).split())
        clash = "ALREADY_EXISTS" in reason or "macro" in reason
        raise ValueError(
            f"expression function {function.name!r} cannot be declared: {reason}"
            + (
                f"; CEL has a function or macro of that name: choose another, such as a dotted "
                f"name (myplugin.{function.name})"
                if clash
                else ""
            )
        ) from None


def register_functions(functions: Iterable[ExpressionFunction]) -> None:
    """Make ``functions`` callable in every expression compiled from now on.

    All or nothing: if one cannot be registered, none is, and :class:`ValueError` says which
    and why: its name is one of CEL's own functions or macros, or it is already registered
    with another definition (two plugins giving one name two meanings). Registering a function
    equal to one registered already (same name, ``fn``, types and description) does nothing,
    so the same plugin may be loaded by several engines; define ``fn`` once, at module level,
    rather than as a new lambda on each call. Expressions compiled earlier are not changed.
    Safe to call from any thread, while other threads compile and evaluate.
    """
    global _functions, _current
    new = list(functions)
    for function in new:
        if not isinstance(function, ExpressionFunction):
            raise TypeError(f"register_functions takes ExpressionFunction values, not {function!r}")
    with _lock:
        staged = dict(_functions)
        for function in new:
            known = staged.setdefault(function.name, function)
            if known != function:
                raise ValueError(
                    f"expression function {function.name!r} is already registered with another "
                    f"definition: {_origin(known.fn)}, {known.signature}; now "
                    f"{_origin(function.fn)}, {function.signature}"
                )
        added = [function for name, function in staged.items() if name not in _functions]
        if not added:
            return
        for function in added:
            _refuse_clash_with_cel(function)
        env = _new_env(staged.values())
        try:
            env.compile("true")
        except RuntimeError as exc:
            names = ", ".join(function.name for function in added)
            reason = " ".join(str(exc).split())
            raise ValueError(f"expression functions {names} cannot be declared: {reason}") from None
        _functions = staged
        _current = _Environment(env, staged)


def registered_functions() -> list[ExpressionFunction]:
    """The registered functions, by name."""
    with _lock:
        return sorted(_functions.values(), key=lambda function: function.name)


def reset_functions() -> None:
    """Forget every registered function. For tests, which call it before and after each test
    that registers functions; an application never needs it. Expressions compiled before keep
    calling the functions they were compiled with."""
    global _functions, _current
    with _lock:
        _functions = {}
        _current = None
