"""CEL conditions and templates: compiled once, pure, JSON in and out, typed errors."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledgerflow import ExpressionError
from ledgerflow.expressions import compile_expression, compile_template, is_expression

VARS: dict[str, Any] = {
    "payload": {"total": 999.5, "count": 3, "items": ["a", "b"], "customer": {"id": "c-1"}},
    "context": {"limit": 1000},
    "role": "manager",
    "event": "ApproveInvoice",
    "state": "pending_approval",
}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("payload.total <= context.limit", True),
        ("payload.total <= 999", False),
        ("payload.count == 3.0", True),
        ("1.5 < 2", True),
        ('role in ["manager", "admin"]', True),
        ("size(payload.items) == 2", True),
        ("has(payload.missing)", False),
        ('"né" + "e"', "née"),
        ('size("héllo")', 5),
        ("payload.count > 2 ? 'many' : 'few'", "many"),
        (
            '{"id": payload.customer.id, "n": [1, 2.5, null, true]}',
            {"id": "c-1", "n": [1, 2.5, None, True]},
        ),
        ("payload.items.map(i, i + '!')", ["a!", "b!"]),
        ("state + ':' + event", "pending_approval:ApproveInvoice"),
    ],
)
def test_values_follow_the_cel_specification(source: str, expected: Any) -> None:
    assert compile_expression(source).evaluate(VARS) == expected


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("payload.total >", "line 1, column 16: Syntax error"),
        ("paylod.total > 1", "undeclared reference to 'paylod.total'; expressions may use payload"),
        ("", "an expression cannot be empty"),
        ("   ", "an expression cannot be empty"),
    ],
)
def test_bad_expressions_fail_to_compile_with_their_position(source: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=message) as info:
        compile_expression(source)
    assert info.value.source == source


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("payload.nothing.deeper", "Key not found in map"),
        ("1 / (payload.count - 3)", "divide by zero"),
        ("9223372036854775807 + payload.count", "overflow"),
        ('timestamp("2024-01-01T00:00:00Z")', "has no JSON form"),
        ("{1: 'one'}", "map keys must be strings"),
        ("1.0 / 0.0", "not a finite number"),
    ],
)
def test_evaluation_errors_are_expression_errors(source: str, message: str) -> None:
    expression = compile_expression(source)
    with pytest.raises(ExpressionError, match=message):
        expression.evaluate(VARS)


def test_a_variable_that_is_not_provided_is_an_evaluation_error() -> None:
    with pytest.raises(ExpressionError, match="steps"):
        compile_expression("steps.a.result").evaluate(VARS)


def test_inputs_cel_cannot_hold_are_expression_errors() -> None:
    with pytest.raises(ExpressionError, match="out of range"):
        compile_expression("payload.big > 0").evaluate({"payload": {"big": 2**64}})


def test_a_condition_must_be_boolean() -> None:
    assert compile_expression("payload.count > 1").test(VARS) is True
    with pytest.raises(ExpressionError, match="must be true or false, not a string"):
        compile_expression("role").test(VARS)


def test_comprehensions_are_bounded() -> None:
    expression = compile_expression(
        "payload.items.all(a, payload.items.all(b, a != '' && b != ''))"
    )
    many = {"payload": {"items": ["x"] * 200}}
    with pytest.raises(ExpressionError):
        expression.evaluate(many)


def test_templates_keep_literals_and_evaluate_expressions_at_any_depth() -> None:
    template = compile_template(
        {
            "id": {"expr": "payload.customer.id"},
            "fixed": [1, {"deep": {"expr": "payload.count * 2"}}],
            "s": "x",
        }
    )
    assert len(template.expressions) == 2
    assert template.render(VARS) == {"id": "c-1", "fixed": [1, {"deep": 6}], "s": "x"}
    literal = compile_template({"a": [1, 2], "b": {"c": None}})
    assert literal.expressions == ()
    assert literal.render({}) == {"a": [1, 2], "b": {"c": None}}
    assert is_expression({"expr": "1"})
    assert not is_expression({"expr": "1", "other": 2})


def test_a_template_expr_must_be_a_string() -> None:
    with pytest.raises(ExpressionError, match="'expr' must be a string, not an integer"):
        compile_template({"x": {"expr": 5}})


def test_one_compiled_expression_is_safe_to_share_between_threads() -> None:
    expression = compile_expression("payload.n * 2 + 1")
    failures: list[str] = []

    def work(offset: int) -> None:
        for n in range(offset, offset + 2000):
            if expression.evaluate({"payload": {"n": n}}) != n * 2 + 1:
                failures.append(f"wrong for {n}")

    threads = [threading.Thread(target=work, args=(k * 10000,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


@given(value=json_values)
def test_any_json_value_passes_through_unchanged_or_is_refused_whole(value: Any) -> None:
    expression = compile_expression("payload.v")
    if _holds_nul(value):
        with pytest.raises(ExpressionError, match="NUL character"):
            expression.evaluate({"payload": {"v": value}})
    else:
        assert expression.evaluate({"payload": {"v": value}}) == value


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(v) for v in value)
    return False
