"""Validating parameters: every bad field named at once, defaults filled in, strict types."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import attrs
import cattrs
import pytest

from ledgerflow.errors import InvalidParametersError
from ledgerflow.model import JSON
from ledgerflow.registry import Action, ActionContext, ActionRegistry, Param


def run(params: Any, ctx: ActionContext) -> Any:
    return params


def problems(action: Action, params: Any) -> list[str]:
    with pytest.raises(InvalidParametersError) as info:
        action.validate(params)
    assert info.value.action == action.name
    assert str(info.value) == (
        f"invalid parameters for action {action.name!r}: " + "; ".join(info.value.problems)
    )
    return list(info.value.problems)


# --------------------------------------------------------------------------------------------
# Param schemas
# --------------------------------------------------------------------------------------------


@pytest.fixture
def payment() -> Action:
    return ActionRegistry().register_simple_action(
        "payments.charge",
        "Charge a customer.",
        [
            {"name": "userId", "type": "string", "required": True},
            {"name": "amount", "type": "number"},
            {"name": "count", "type": "integer", "required": False, "default": 1},
            {"name": "express", "type": "boolean", "required": False, "default": False},
            {"name": "meta", "type": "object", "required": False, "default": {"source": "api"}},
            {"name": "lines", "type": "array", "required": False},
            {"name": "note", "required": False},
        ],
        run,
    )


def test_defaults_are_filled_in_and_optional_fields_without_one_are_left_out(
    payment: Action,
) -> None:
    assert payment.validate({"userId": "u-1", "amount": 9.5}) == {
        "userId": "u-1",
        "amount": 9.5,
        "count": 1,
        "express": False,
        "meta": {"source": "api"},
    }


def test_given_values_win_over_defaults(payment: Action) -> None:
    given = {
        "userId": "u-1",
        "amount": 1,
        "count": 2,
        "express": True,
        "meta": {},
        "lines": [1, "a"],
        "note": None,
    }
    assert payment.validate(given) == given


def test_each_validation_gets_its_own_copy_of_a_default(payment: Action) -> None:
    first = payment.validate({"userId": "u", "amount": 1})
    first["meta"]["source"] = "changed"
    assert payment.validate({"userId": "u", "amount": 1})["meta"] == {"source": "api"}


def test_every_bad_field_is_named_at_once(payment: Action) -> None:
    assert problems(
        payment,
        {"amount": "12", "count": True, "express": 1, "meta": [], "lines": {}, "colour": "red"},
    ) == [
        "userId: missing required field",
        "amount: expected number, got string",
        "count: expected integer, got boolean",
        "express: expected boolean, got integer",
        "meta: expected object, got array",
        "lines: expected array, got object",
        "colour: unknown field",
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [(3, 3), (-7, -7), (3.0, 3), (2.0**60, 2**60)],
)
def test_an_integer_accepts_whole_numbers_and_hands_over_an_int(value: Any, expected: int) -> None:
    action = ActionRegistry().register_simple_action(
        "a", "", [{"name": "n", "type": "integer"}], run
    )
    result = action.validate({"n": value})["n"]
    assert result == expected
    assert type(result) is int


@pytest.mark.parametrize(
    ("kind", "value", "got"),
    [
        ("integer", True, "boolean"),
        ("integer", "1", "string"),
        ("integer", 1.5, "number"),
        ("integer", None, "null"),
        ("number", False, "boolean"),
        ("number", "1.5", "string"),
        ("string", 1, "integer"),
        ("string", None, "null"),
        ("boolean", 0, "integer"),
        ("boolean", "true", "string"),
        ("object", "{}", "string"),
        ("array", "abc", "string"),
    ],
)
def test_types_are_strict(kind: str, value: Any, got: str) -> None:
    action = ActionRegistry().register_simple_action("a", "", [{"name": "v", "type": kind}], run)
    assert problems(action, {"v": value}) == [f"v: expected {kind}, got {got}"]


def test_an_integer_is_accepted_as_a_number_and_stays_an_integer() -> None:
    action = ActionRegistry().register_simple_action(
        "a", "", [{"name": "x", "type": "number"}], run
    )
    assert action.validate({"x": 3}) == {"x": 3}
    assert type(action.validate({"x": 3})["x"]) is int


def test_parameters_must_be_a_mapping(payment: Action) -> None:
    assert problems(payment, ["u-1", 9.5]) == [
        "expected an object of parameters, got array",
    ]


def test_an_action_without_parameters_refuses_any() -> None:
    action = ActionRegistry().register_simple_action("a", "", [], run)
    assert action.validate({}) == {}
    assert problems(action, {"x": 1, "y": 2}) == ["x: unknown field", "y: unknown field"]


def test_additional_params_are_passed_on_unchecked() -> None:
    registry = ActionRegistry()
    action = registry.register_simple_action(
        "ledger.keep",
        "Keep whatever it is given.",
        [{"name": "label", "type": "string", "required": False, "default": "kept"}],
        run,
        additional_params=True,
    )
    assert action.validate({"invoice_id": "i-1", "total": 3.5}) == {
        "label": "kept",
        "invoice_id": "i-1",
        "total": 3.5,
    }
    assert problems(action, {"label": 1, "other": None}) == ["label: expected string, got integer"]
    assert action.json_schema()["additionalProperties"] is True


def test_an_action_without_declared_parameters_may_take_any() -> None:
    registry = ActionRegistry()
    registry.action("record", additional_params=True)(run)
    assert registry.get("record").validate({"a": 1, "b": [2]}) == {"a": 1, "b": [2]}


# --------------------------------------------------------------------------------------------
# attrs schemas
# --------------------------------------------------------------------------------------------


class Priority(enum.Enum):
    LOW = "low"
    HIGH = "high"


@attrs.frozen(kw_only=True)
class Address:
    street: str
    zip: str
    country: str = "NL"


@attrs.frozen(kw_only=True)
class Shipment:
    order_id: str = attrs.field(metadata={"description": "the order to ship"})
    weight: float
    parcels: int = 1
    fragile: bool = False
    address: Address
    billing: Address | None = None
    tags: list[str] = attrs.Factory(list)
    sizes: Sequence[int] = ()
    labels: Mapping[str, str] = attrs.Factory(dict)
    carrier: Literal["dhl", "ups"] = "dhl"
    priority: Priority = Priority.LOW
    extra: JSON = None


@attrs.frozen(kw_only=True)
class Positive:
    amount: int = attrs.field(validator=attrs.validators.gt(0))


@pytest.fixture
def ship() -> Action:
    registry = ActionRegistry()
    registry.action("warehouse.ship", params=Shipment)(run)
    return registry.get("warehouse.ship")


ADDRESS = {"street": "Main 1", "zip": "1000AA"}


def test_an_attrs_schema_gives_an_instance_with_defaults(ship: Action) -> None:
    assert ship.validate({"order_id": "o-1", "weight": 2, "address": ADDRESS}) == Shipment(
        order_id="o-1", weight=2.0, address=Address(street="Main 1", zip="1000AA")
    )


def test_an_attrs_schema_structures_every_kind_of_field(ship: Action) -> None:
    result = ship.validate(
        {
            "order_id": "o-1",
            "weight": 2.5,
            "parcels": 3.0,
            "fragile": True,
            "address": ADDRESS,
            "billing": {**ADDRESS, "country": "BE"},
            "tags": ["a", "b"],
            "sizes": [1, 2],
            "labels": {"k": "v"},
            "carrier": "ups",
            "priority": "high",
            "extra": {"anything": [1, None]},
        }
    )
    assert result == Shipment(
        order_id="o-1",
        weight=2.5,
        parcels=3,
        fragile=True,
        address=Address(street="Main 1", zip="1000AA"),
        billing=Address(street="Main 1", zip="1000AA", country="BE"),
        tags=["a", "b"],
        sizes=(1, 2),
        labels={"k": "v"},
        carrier="ups",
        priority=Priority.HIGH,
        extra={"anything": [1, None]},
    )
    assert type(result.weight) is float
    assert type(result.parcels) is int


def test_an_attrs_schema_names_every_bad_field_at_once(ship: Action) -> None:
    assert problems(
        ship,
        {
            "weight": "2",
            "parcels": True,
            "fragile": 1,
            "address": {"street": 5, "town": "X"},
            "billing": "same",
            "tags": "a,b",
            "sizes": [1, "2", 3.5],
            "labels": {"k": 1},
            "carrier": "fedex",
            "priority": "urgent",
            "colour": "red",
        },
    ) == [
        "order_id: missing required field",
        "weight: expected number, got string",
        "parcels: expected integer, got boolean",
        "fragile: expected boolean, got integer",
        "address.street: expected string, got integer",
        "address.zip: missing required field",
        "address.town: unknown field",
        "billing: expected object, got string",
        "tags: expected array, got string",
        "sizes[1]: expected integer, got string",
        "sizes[2]: expected integer, got number",
        "labels.k: expected string, got integer",
        'carrier: expected one of "dhl", "ups", got "fedex"',
        'priority: expected one of "low", "high", got "urgent"',
        "colour: unknown field",
    ]


def test_strings_are_not_numbers_and_booleans_are_not_integers(ship: Action) -> None:
    base = {"order_id": "o-1", "weight": 1, "address": ADDRESS}
    assert problems(ship, {**base, "parcels": "2"}) == ["parcels: expected integer, got string"]
    assert problems(ship, {**base, "parcels": False}) == ["parcels: expected integer, got boolean"]
    assert problems(ship, {**base, "weight": True}) == ["weight: expected number, got boolean"]
    assert problems(ship, {**base, "order_id": 7}) == ["order_id: expected string, got integer"]


def test_an_attrs_schema_refuses_a_non_mapping(ship: Action) -> None:
    assert problems(ship, "o-1") == ["expected an object of parameters, got string"]


def test_a_class_validator_failure_is_a_parameter_problem() -> None:
    registry = ActionRegistry()
    registry.action("pay", params=Positive)(run)
    assert problems(registry.get("pay"), {"amount": 0}) == ["'amount' must be > 0: 0"]


def test_a_number_too_large_for_a_float_is_refused(ship: Action) -> None:
    assert problems(ship, {"order_id": "o", "weight": 10**400, "address": ADDRESS}) == [
        f"weight: {10**400} is too large for a floating-point number"
    ]


def test_the_attrs_schema_describes_the_class(ship: Action) -> None:
    schema = ship.json_schema()
    assert schema["required"] == ["order_id", "weight", "address"]
    assert schema["additionalProperties"] is False
    properties = schema["properties"]
    assert properties["order_id"] == {"type": "string", "description": "the order to ship"}
    assert properties["parcels"] == {"type": "integer", "default": 1}
    assert properties["billing"]["anyOf"][1] == {"type": "null"}
    assert properties["billing"]["default"] is None
    assert properties["address"]["required"] == ["street", "zip"]
    assert properties["sizes"] == {"type": "array", "items": {"type": "integer"}, "default": []}
    assert properties["labels"] == {
        "type": "object",
        "additionalProperties": {"type": "string"},
        "default": {},
    }
    assert properties["carrier"] == {"enum": ["dhl", "ups"], "default": "dhl"}
    assert properties["priority"] == {"enum": ["low", "high"], "default": "low"}
    assert properties["extra"] == {"default": None}


def test_params_of_an_action_without_parameters_must_be_empty() -> None:
    registry = ActionRegistry()
    registry.action("ping")(run)
    assert registry.get("ping").validate({}) == {}
    assert problems(registry.get("ping"), {"x": 1}) == ["x: unknown field"]


def test_validation_accepts_any_mapping(payment: Action) -> None:
    class Frozen(Mapping[str, Any]):
        def __init__(self, data: dict[str, Any]) -> None:
            self._data = data

        def __getitem__(self, key: str) -> Any:
            return self._data[key]

        def __iter__(self) -> Any:
            return iter(self._data)

        def __len__(self) -> int:
            return len(self._data)

    assert payment.validate(Frozen({"userId": "u", "amount": 1}))["userId"] == "u"


def test_a_param_schema_describes_its_params(payment: Action) -> None:
    schema = payment.json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["required"] == ["userId", "amount"]
    assert schema["properties"]["count"] == {"type": "integer", "default": 1}
    assert schema["properties"]["note"] == {}
    assert schema["additionalProperties"] is False


def test_param_objects_compare_by_value() -> None:
    assert Param(name="x", type="string") == Param.from_mapping({"name": "x", "type": "string"})


def share(value: int) -> int:
    return 100 // value


@attrs.frozen(kw_only=True)
class Broken:
    amount: int = attrs.field(converter=share)


def test_a_bug_in_the_class_is_not_reported_as_bad_parameters() -> None:
    registry = ActionRegistry()
    registry.action("broken", params=Broken)(run)
    with pytest.raises(cattrs.BaseValidationError) as info:
        registry.get("broken").validate({"amount": 0})
    assert info.group_contains(ZeroDivisionError)
