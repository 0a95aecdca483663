"""Functions that plugins add to expressions: declared with CEL types, called with JSON values,
checked on the way in and out, and registered once per name."""

from __future__ import annotations

import datetime
import math
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ledgerflow
from ledgerflow import Event, ExpressionError
from ledgerflow.expressions import (
    ExpressionFunction,
    compile_expression,
    compile_template,
    register_functions,
    registered_functions,
    reset_functions,
)
from ledgerflow.model import JSON

DOCS = Path(__file__).resolve().parents[2] / "docs" / "content"


@pytest.fixture(autouse=True)
def functions_as_found() -> Iterator[None]:
    """Each test starts with no registered function, and leaves the registry as it found it."""
    before = registered_functions()
    reset_functions()
    yield
    reset_functions()
    register_functions(before)


def vat(amount: int | float, rate: float) -> float:
    return round(amount * rate, 2)


def shout(text: str) -> str:
    return text.upper() + "!"


def echo(value: Any) -> Any:
    return value


VAT = ExpressionFunction(
    name="billing.vat",
    fn=vat,
    params=("dyn", "double"),
    result="double",
    description="The VAT on an amount, rounded to cents.",
)
SHOUT = ExpressionFunction(name="shout", fn=shout, params=("string",), result="string")
ECHO = ExpressionFunction(name="echo", fn=echo, params=("dyn",))


def flat(amount: int | float, rate: float) -> float:
    return 0.0


def constant(value: JSON) -> Callable[[], JSON]:
    return lambda: value


def returning(value: Any, result: str = "dyn") -> ExpressionFunction:
    return ExpressionFunction(name="give", fn=constant(value), result=result)


# --------------------------------------------------------------------------------------------
# Calling functions
# --------------------------------------------------------------------------------------------


def test_a_function_decides_a_condition() -> None:
    register_functions([VAT])
    condition = compile_expression("billing.vat(payload.total, 0.2) < 100.0")
    assert condition.test({"payload": {"total": 120}}) is True
    assert condition.test({"payload": {"total": 999.5}}) is False


def test_a_function_fills_a_step_parameter_template() -> None:
    register_functions([VAT, SHOUT])
    template = compile_template(
        {
            "channel": "billing",
            "subject": {"expr": "shout(payload.customer)"},
            "lines": [{"vat": {"expr": "billing.vat(payload.total, 0.2)"}}],
        }
    )
    assert template.render({"payload": {"customer": "ann", "total": 120}}) == {
        "channel": "billing",
        "subject": "ANN!",
        "lines": [{"vat": 24.0}],
    }


def test_a_definition_calls_a_registered_function_and_refuses_an_unknown_one() -> None:
    text = """
    {"name": "W", "version": 1, "initial_state": "a", "states": ["a", "b"],
     "terminal_states": ["b"],
     "transitions": [{"from": "a", "to": "b", "on": "Go",
                      "condition": "billing.vat(payload.total, 0.2) < 100.0",
                      "set": {"vat": {"expr": "billing.vat(payload.total, 0.2)"}}}]}
    """
    with pytest.raises(ledgerflow.DefinitionError, match="undeclared reference to 'billing'"):
        ledgerflow.loads(text, "json")
    register_functions([VAT])
    definition = ledgerflow.loads(text, "json")
    state = ledgerflow.fold(definition, [ledgerflow.start(definition)])
    accepted = ledgerflow.decide(definition, state, Event(name="Go", payload={"total": 120}))
    assert isinstance(accepted, ledgerflow.Accepted)
    assert accepted.context["vat"] == 24.0
    refused = ledgerflow.decide(definition, state, Event(name="Go", payload={"total": 1200}))
    assert isinstance(refused, ledgerflow.Rejected)
    assert refused.reason is ledgerflow.RejectReason.CONDITION_FALSE


def test_arguments_arrive_as_plain_json_values() -> None:
    seen: list[Any] = []

    def record(value: Any) -> Any:
        seen.append(value)
        return value

    register_functions([ExpressionFunction(name="record", fn=record, params=("dyn",))])
    payload = {"n": 1, "x": 2.5, "s": "é", "none": None, "list": [1, {"a": [True]}]}
    assert compile_expression("record(payload)").evaluate({"payload": payload}) == payload
    assert compile_expression("record(7u)").evaluate({}) == 7
    assert compile_expression("record([1, 'a', {'k': null}])").evaluate({}) == [1, "a", {"k": None}]
    assert seen == [payload, 7, [1, "a", {"k": None}]]
    assert [type(value) for value in seen] == [dict, int, list]
    assert type(seen[0]["list"][1]) is dict


def test_dotted_names_and_functions_without_arguments_work() -> None:
    register_functions(
        [
            ExpressionFunction(name="acme.billing.rate", fn=lambda: 0.2, result="double"),
            ExpressionFunction(name="_hidden", fn=lambda: "h", result="string"),
        ]
    )
    assert compile_expression("acme.billing.rate() * 10.0").evaluate({}) == 2.0
    assert compile_expression("_hidden()").evaluate({}) == "h"


def test_an_int_returned_for_a_double_is_a_double_and_a_tuple_is_a_list() -> None:
    register_functions([returning(2, "double")])
    value = compile_expression("give()").evaluate({})
    assert value == 2.0
    assert isinstance(value, float)
    reset_functions()
    register_functions([returning((1, "a"), "list")])
    assert compile_expression("give()").evaluate({}) == [1, "a"]


def documented(language: str) -> str:
    """The first ``language`` block of the page's section "Functions from plugins"."""
    page = (DOCS / "expressions.md").read_text(encoding="utf-8")
    section = page[page.index("## Functions from plugins") :]
    block = re.search(rf"^```{language}\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)
    assert block is not None, f"the section shows no {language}"
    return block[1]


def test_the_documented_plugin_registers_a_function_its_definitions_can_call() -> None:
    module: dict[str, Any] = {"__name__": "ledgerflow_docs_functions"}
    exec(compile(documented("python"), "expressions.md", "exec"), module)
    functions: list[ExpressionFunction] = []
    module["ledgerflow_register_expression_functions"](functions)
    register_functions(functions)
    shown = yaml.safe_load(documented("yaml"))
    variables = {"payload": {"invoice": {"total": 120}}}
    assert compile_expression(shown["condition"]).test(variables) is True
    assert compile_template(shown["set"]).render(variables) == {"vat": 24.0}


# --------------------------------------------------------------------------------------------
# Wrong calls: at compile time where CEL's checker knows the types, else at evaluation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "shout(1)",
            "line 1, column 6: found no matching overload for 'shout' applied to '(int)'; "
            "call it as shout(string)",
        ),
        (
            "billing.vat(payload.total, 1)",
            "found no matching overload for 'billing.vat' applied to '(dyn, int)'; "
            "call it as billing.vat(dyn, double)",
        ),
        ("shout(billing.vat(1, 0.2))", "found no matching overload for 'shout'"),
    ],
)
def test_an_argument_of_a_type_known_at_compile_time_is_refused_then(
    source: str, message: str
) -> None:
    register_functions([VAT, SHOUT])
    with pytest.raises(ExpressionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compile_expression(source)


@pytest.mark.parametrize(
    "source", ["shout()", "shout('a', 'b')", "billing.vat(1)", "payload.name.shout()"]
)
def test_the_wrong_number_of_arguments_or_a_method_call_is_refused_at_compile_time(
    source: str,
) -> None:
    register_functions([VAT, SHOUT])
    with pytest.raises(ExpressionError, match="wrong number of arguments or as a method") as info:
        compile_expression(source)
    assert "call it as" in info.value.message
    assert info.value.source == source


def test_an_argument_whose_type_is_known_only_at_evaluation_fails_then() -> None:
    register_functions([VAT, SHOUT])
    shouted = compile_expression("shout(payload.name)")
    with pytest.raises(
        ExpressionError,
        match=r"No matching overloads found : shout\(int64\); call it as shout\(string\)",
    ):
        shouted.evaluate({"payload": {"name": 7}})
    rated = compile_expression("billing.vat(100, payload.rate)")
    assert rated.evaluate({"payload": {"rate": 0.5}}) == 50.0
    with pytest.raises(ExpressionError, match=r"billing\.vat\(int64, int64\)"):
        rated.evaluate({"payload": {"rate": 1}})


def test_an_exception_in_the_function_is_an_expression_error_naming_it() -> None:
    register_functions([ExpressionFunction(name="ratio", fn=lambda n: 1 / n, params=("dyn",))])
    expression = compile_expression("ratio(payload.n)")
    assert expression.evaluate({"payload": {"n": 4}}) == 0.25
    with pytest.raises(
        ExpressionError, match="ratio raised ZeroDivisionError: division by zero"
    ) as info:
        expression.evaluate({"payload": {"n": 0}})
    assert info.value.source == "ratio(payload.n)"
    with pytest.raises(ExpressionError, match="ratio raised TypeError"):
        expression.evaluate({"payload": {"n": "four"}})
    # CEL's logic absorbs an error that cannot change the outcome, a failed call included
    assert compile_expression("ratio(0) > 1.0 || true").test({}) is True


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no")


def raising(exc: BaseException) -> ExpressionFunction:
    def fail() -> JSON:
        raise exc

    return ExpressionFunction(name="fail", fn=fail)


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        # cel-expr-python would crash the process on the surrogate, and cut the text at NUL
        (
            ValueError("bad \ud800 and \x00 here"),
            r"fail raised ValueError: bad \\ud800 and \\x00 here",
        ),
        (Unprintable(), r"fail raised Unprintable: \(its message cannot be printed\)"),
    ],
)
def test_any_exception_message_comes_back_whole(exc: Exception, message: str) -> None:
    register_functions([raising(exc)])
    with pytest.raises(ExpressionError, match=message):
        compile_expression("fail()").evaluate({})


@pytest.mark.parametrize("exc", [KeyboardInterrupt("stop"), SystemExit(3)])
def test_an_interruption_in_the_function_is_raised_not_turned_into_a_decision(
    exc: BaseException,
) -> None:
    register_functions([raising(exc)])
    for source in ["fail()", "fail() == 1 || true"]:
        with pytest.raises(type(exc)):
            compile_expression(source).evaluate({})
    assert compile_expression("1 + 1").evaluate({}) == 2  # nothing left pending


@pytest.mark.parametrize(
    ("value", "result", "message"),
    [
        (math.nan, "dyn", "the value give returned is nan, which is not a finite number"),
        (math.inf, "double", "is inf, which is not a finite number"),
        ({1, 2}, "dyn", "is a Python set, which has no JSON form"),
        ([datetime.datetime(2024, 1, 1)], "list", "holds a timestamp, which has no JSON form"),
        ({1: "one"}, "map", "map keys must be strings"),
        ("a\x00b", "string", "holds a string with the NUL character"),
        (["a\ud800"], "list", "holds the string 'a\\\\ud800', which is not valid Unicode"),
        ({"\x00": 1}, "map", "holds a string with the NUL character"),
        ({"deep": [2**63]}, "dyn", "holds 9223372036854775808, beyond CEL's 64-bit integers"),
        (-(2**63) - 1, "int", "beyond CEL's 64-bit integers"),
        ("7", "int", "is a string, but it declares the result int"),
        (True, "int", "is a boolean, but it declares the result int"),
        (1, "bool", "is an integer, but it declares the result bool"),
        (None, "string", "is null, but it declares the result string"),
        ({"a": 1}, "list", "is a map, but it declares the result list"),
    ],
)
def test_a_return_value_that_is_not_json_or_not_its_type_is_an_expression_error(
    value: Any, result: str, message: str
) -> None:
    register_functions([returning(value, result)])
    expression = compile_expression("give()")
    with pytest.raises(ExpressionError, match=message):
        expression.evaluate({})


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "echo(timestamp('2024-01-01T00:00:00Z'))",
            r"argument 1 of echo is a timestamp, which has no JSON form; convert it with string",
        ),
        ("echo(b'x')", "argument 1 of echo is bytes, which has no JSON form"),
        ("echo([duration('1s')])", "argument 1 of echo holds a duration"),
        ("echo({1: 'one'})", "argument 1 of echo is a map with an integer key"),
        ("echo(0.0 / 0.0)", "argument 1 of echo is nan, which is not a finite number"),
    ],
)
def test_an_argument_with_no_json_form_is_an_expression_error(source: str, message: str) -> None:
    register_functions([ECHO])
    expression = compile_expression(source)
    with pytest.raises(ExpressionError, match=message):
        expression.evaluate({})


def test_an_unknown_name_lists_the_registered_functions() -> None:
    register_functions([VAT, SHOUT])
    with pytest.raises(
        ExpressionError,
        match="undeclared reference to 'shoutt'; expressions may use payload, .*, execution "
        r"and the functions billing\.vat, shout",
    ):
        compile_expression("shoutt('a')")


def test_the_first_error_the_runtime_agrees_with_is_reported() -> None:
    # The checker's complaint about 1 == 1.0 comes first; the runtime allows it.
    with pytest.raises(ExpressionError, match=r"column 19: undeclared reference to 'paylod\.x'"):
        compile_expression("1 == 1.0 && paylod.x")


# --------------------------------------------------------------------------------------------
# Registering
# --------------------------------------------------------------------------------------------


def test_registered_functions_are_listed_by_name_with_their_signatures() -> None:
    register_functions([SHOUT, VAT])
    assert registered_functions() == [VAT, SHOUT]
    assert [f.signature for f in registered_functions()] == [
        "billing.vat(dyn, double) -> double",
        "shout(string) -> string",
    ]


def test_registering_an_equal_function_again_changes_nothing() -> None:
    register_functions([VAT])
    compiled = compile_expression("billing.vat(10, 0.5)")
    register_functions([VAT, SHOUT])
    register_functions(
        [ExpressionFunction(**_fields(VAT)), SHOUT]  # equal, not the same object
    )
    assert registered_functions() == [VAT, SHOUT]
    assert compiled.evaluate({}) == 5.0


def _fields(function: ExpressionFunction) -> dict[str, Any]:
    return {
        "name": function.name,
        "fn": function.fn,
        "params": function.params,
        "result": function.result,
        "description": function.description,
    }


@pytest.mark.parametrize(
    "other",
    [
        ExpressionFunction(name="billing.vat", fn=flat, params=("dyn", "double"), result="double"),
        ExpressionFunction(name="billing.vat", fn=vat, params=("double", "double")),
        ExpressionFunction(
            name="billing.vat", fn=vat, params=("dyn", "double"), result="double", description="x"
        ),
    ],
)
def test_one_name_cannot_have_two_definitions(other: ExpressionFunction) -> None:
    register_functions([VAT])
    with pytest.raises(
        ValueError,
        match=r"expression function 'billing\.vat' is already registered with another "
        r"definition: .*test_functions\.vat, billing\.vat\(dyn, double\) -> double; now ",
    ):
        register_functions([other])
    assert registered_functions() == [VAT]


@pytest.mark.parametrize("name", ["size", "int", "string", "matches", "contains", "has"])
def test_a_name_of_cel_itself_is_refused(name: str) -> None:
    function = ExpressionFunction(name=name, fn=echo, params=("dyn",))
    with pytest.raises(
        ValueError,
        match=f"expression function '{name}' cannot be declared: .*CEL has a function or macro "
        f"of that name: choose another, such as a dotted name \\(myplugin.{name}\\)",
    ):
        register_functions([function])
    assert registered_functions() == []


def test_registration_is_all_or_nothing() -> None:
    with pytest.raises(ValueError, match="'size'"):
        register_functions([SHOUT, ExpressionFunction(name="size", fn=echo, params=("dyn",))])
    with pytest.raises(ValueError, match="already registered with another definition"):
        register_functions([SHOUT, ExpressionFunction(name="shout", fn=echo, params=("dyn",))])
    assert registered_functions() == []
    with pytest.raises(ExpressionError, match="undeclared reference to 'shout'"):
        compile_expression("shout('a')")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "is not a CEL name"),
        ("1a", "is not a CEL name"),
        ("a-b", "is not a CEL name"),
        ("a b", "is not a CEL name"),
        ("a..b", "is not a CEL name"),
        (".a", "is not a CEL name"),
        ("a.", "is not a CEL name"),
        ("é", "is not a CEL name"),
        ("in", "'in' is a reserved word in CEL"),
        ("billing.for", "'for' is a reserved word in CEL"),
        ("null", "'null' is a reserved word in CEL"),
        ("payload", "starts with the variable 'payload'"),
        ("context.total", "starts with the variable 'context'"),
    ],
)
def test_bad_names_are_refused(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ExpressionFunction(name=name, fn=echo, params=("dyn",))


def test_bad_declarations_are_refused() -> None:
    with pytest.raises(TypeError, match="params must be a sequence of type names"):
        ExpressionFunction(name="f", fn=echo, params="dyn")
    with pytest.raises(ValueError, match="the parameter 1 type 'str' is not one of dyn, string"):
        ExpressionFunction(name="f", fn=echo, params=("str",))
    with pytest.raises(ValueError, match="the result type 'float' is not one of"):
        ExpressionFunction(name="f", fn=echo, params=("dyn",), result="float")
    with pytest.raises(TypeError, match="'fn' must be callable"):
        ExpressionFunction(name="f", fn=3, params=("dyn",))  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=r"'f': .*test_functions\.echo cannot be called with 2 argument\(s\)"
    ):
        ExpressionFunction(name="f", fn=echo, params=("dyn", "dyn"))
    with pytest.raises(TypeError, match="takes ExpressionFunction values"):
        register_functions([echo])  # type: ignore[list-item]


# --------------------------------------------------------------------------------------------
# Compiled expressions and threads
# --------------------------------------------------------------------------------------------


def test_compiled_expressions_keep_working_after_registration_and_reset() -> None:
    register_functions([SHOUT])
    compiled = compile_expression("shout(payload.name)")
    register_functions([VAT, ECHO])
    assert compiled.evaluate({"payload": {"name": "ann"}}) == "ANN!"
    reset_functions()
    assert compiled.evaluate({"payload": {"name": "bob"}}) == "BOB!"
    with pytest.raises(ExpressionError, match="undeclared reference to 'shout'"):
        compile_expression("shout(payload.name)")


def test_threads_compile_and_evaluate_while_functions_are_registered() -> None:
    register_functions([SHOUT])
    failures: list[BaseException] = []
    start = threading.Barrier(5)

    def work(n: int) -> None:
        start.wait()
        try:
            for i in range(200):
                name = f"t{n}-{i}"
                value = compile_expression("shout(payload.name)").evaluate(
                    {"payload": {"name": name}}
                )
                assert value == name.upper() + "!"
        except BaseException as exc:  # report in the main thread
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    start.wait()
    for i in range(40):
        register_functions([ExpressionFunction(name=f"extra.f{i}", fn=constant(i))])
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(registered_functions()) == 41
    assert compile_expression("extra.f39()").evaluate({}) == 39


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------


def label(text: str, count: int) -> str:
    return f"{text.strip()}:{count * 3 - 1}"


LABEL = ExpressionFunction(name="label", fn=label, params=("string", "int"), result="string")
INT64 = st.integers(min_value=-(2**61), max_value=2**61)
TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"))
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
NO_RESET_PER_EXAMPLE = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


@NO_RESET_PER_EXAMPLE
@given(text=TEXT, count=INT64)
def test_a_registered_function_gives_what_python_gives(text: str, count: int) -> None:
    register_functions([LABEL])  # once; again for each example, which changes nothing
    expression = compile_expression("label(payload.text, payload.count)")
    assert expression.evaluate({"payload": {"text": text, "count": count}}) == label(text, count)


@NO_RESET_PER_EXAMPLE
@given(value=JSON_VALUES)
def test_a_json_value_passes_through_a_function_unchanged(value: Any) -> None:
    register_functions([ECHO])
    assert compile_expression("echo(payload.value)").evaluate({"payload": {"value": value}}) == (
        value
    )
