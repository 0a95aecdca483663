"""Registering actions: the three ways, and every registration error with its message."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import attrs
import pytest

from ledgerflow.errors import ActionRegistrationError, UnknownActionError
from ledgerflow.registry import (
    NO_DEFAULT,
    Action,
    ActionContext,
    ActionRegistry,
    Isolation,
    Param,
)


def run(params: Any, ctx: ActionContext) -> Any:
    """Return the parameters unchanged.

    The rest of this docstring is not part of the description.
    """
    return params


async def run_async(params: Any, ctx: ActionContext) -> Any:
    return params


@attrs.frozen(kw_only=True)
class Transfer:
    source: str
    target: str
    amount: float


@attrs.frozen
class Unsupported:
    when: set[int]


@attrs.frozen
class Node:
    children: list[Node]


def registration_error(register: Callable[[ActionRegistry], object]) -> str:
    registry = ActionRegistry()
    with pytest.raises(ActionRegistrationError) as info:
        register(registry)
    return str(info.value)


# --------------------------------------------------------------------------------------------
# The three ways to register
# --------------------------------------------------------------------------------------------


def test_a_simple_action_takes_param_objects_and_seed_mappings() -> None:
    registry = ActionRegistry()
    action = registry.register_simple_action(
        "users.notify",
        "Tell a user something.",
        [
            {"name": "userId", "type": "string", "required": True},
            Param(name="loud", type="boolean", required=False, default=False),
        ],
        run,
    )
    assert action.kind == "simple"
    assert action.isolation is None
    assert action.params == (
        Param(name="userId", type="string"),
        Param(name="loud", type="boolean", required=False, default=False),
    )
    assert action.params_class is None
    assert action.is_async is False
    assert registry.get("users.notify") is action


def test_a_database_action_parses_its_isolation_level() -> None:
    registry = ActionRegistry()
    action = registry.register_database_action(
        "ledger.post", "Post an entry.", [], "repeatable_read", run
    )
    assert action.kind == "database"
    assert action.isolation is Isolation.REPEATABLE_READ
    other = registry.register_database_action(
        "ledger.void", "Void an entry.", [], Isolation.SERIALIZABLE, run
    )
    assert other.isolation is Isolation.SERIALIZABLE


@pytest.mark.parametrize(
    ("text", "level"),
    [
        ("READ UNCOMMITTED", Isolation.READ_UNCOMMITTED),
        ("read committed", Isolation.READ_COMMITTED),
        ("REPEATABLE_READ", Isolation.REPEATABLE_READ),
        ("Serializable", Isolation.SERIALIZABLE),
    ],
)
def test_isolation_levels_are_read_by_value_or_name_in_any_case(
    text: str, level: Isolation
) -> None:
    assert Isolation.parse(text) is level


def test_isolation_values_are_sqlalchemy_isolation_level_strings() -> None:
    assert [level.value for level in Isolation] == [
        "READ UNCOMMITTED",
        "READ COMMITTED",
        "REPEATABLE READ",
        "SERIALIZABLE",
    ]


def test_the_decorator_defaults_name_and_description_from_the_function() -> None:
    registry = ActionRegistry()
    returned = registry.action()(run)
    assert returned is run
    action = registry.get("run")
    assert action.description == "Return the parameters unchanged."
    assert action.params == ()
    assert action.params_class is None
    assert action.kind == "simple"


def test_the_decorator_takes_an_attrs_class_and_an_isolation_level() -> None:
    registry = ActionRegistry()

    @registry.action(
        "bank.transfer", description="Move money.", params=Transfer, isolation="SERIALIZABLE"
    )
    async def transfer(params: Transfer, ctx: ActionContext) -> None:
        """Not the description: one was given."""

    action = registry.get("bank.transfer")
    assert action.description == "Move money."
    assert action.params is None
    assert action.params_class is Transfer
    assert action.kind == "database"
    assert action.isolation is Isolation.SERIALIZABLE
    assert action.is_async is True
    assert action.fn is transfer


def test_a_function_without_a_docstring_has_an_empty_description() -> None:
    registry = ActionRegistry()
    registry.action()(run_async)
    assert registry.get("run_async").description == ""


def test_an_action_built_directly_is_registered_as_it_is() -> None:
    registry = ActionRegistry()
    action = Action(name="a", description="A.", kind="simple", params=(), fn=run)
    assert registry.register(action) is action
    assert registry.get("a") is action


# --------------------------------------------------------------------------------------------
# Async detection
# --------------------------------------------------------------------------------------------


class AsyncCallable:
    async def __call__(self, params: Any, ctx: ActionContext) -> Any:
        return params


class SyncCallable:
    def __call__(self, params: Any, ctx: ActionContext) -> Any:
        return params


@pytest.mark.parametrize(
    ("fn", "is_async"),
    [
        (run, False),
        (run_async, True),
        (lambda params, ctx: params, False),
        (functools.partial(run_async), True),
        (AsyncCallable(), True),
        (SyncCallable(), False),
    ],
)
def test_async_functions_are_detected(fn: Callable[..., Any], is_async: bool) -> None:
    registry = ActionRegistry()
    assert registry.register_simple_action("a", "", [], fn).is_async is is_async


# --------------------------------------------------------------------------------------------
# Lookup and iteration
# --------------------------------------------------------------------------------------------


def test_lookup_iteration_and_size() -> None:
    registry = ActionRegistry()
    for name in ("zeta", "alpha", "m.id-2"):
        registry.register_simple_action(name, "", [], run)
    assert list(registry) == ["alpha", "m.id-2", "zeta"]
    assert len(registry) == 3
    assert "alpha" in registry
    assert "beta" not in registry
    assert 3 not in registry
    with pytest.raises(UnknownActionError, match="unknown action 'beta'") as info:
        registry.get("beta")
    assert info.value.name == "beta"


def test_registries_are_independent() -> None:
    first, second = ActionRegistry(), ActionRegistry()
    first.register_simple_action("a", "", [], run)
    assert "a" not in second
    second.register_simple_action("a", "", [], run)


# --------------------------------------------------------------------------------------------
# describe()
# --------------------------------------------------------------------------------------------


def test_describe_is_sorted_and_json_serialisable() -> None:
    registry = ActionRegistry()
    registry.register_simple_action(
        "users.notify",
        "Tell a user.",
        [
            {"name": "userId", "type": "string", "description": "who"},
            {"name": "tags", "type": "array", "required": False, "default": ["a"]},
        ],
        run,
    )
    registry.action("bank.transfer", params=Transfer, isolation="READ COMMITTED")(run_async)
    described = registry.describe()
    assert json.loads(json.dumps(described)) == described
    assert [entry["name"] for entry in described] == ["bank.transfer", "users.notify"]
    assert described[0] == {
        "name": "bank.transfer",
        "description": "",
        "kind": "database",
        "isolation": "READ COMMITTED",
        "async": True,
        "breaker": None,
        "checkpoint": True,
        "parameters": {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "Transfer",
            "type": "object",
            "properties": {
                "source": {"type": "string"},
                "target": {"type": "string"},
                "amount": {"type": "number"},
            },
            "required": ["source", "target", "amount"],
            "additionalProperties": False,
        },
    }
    assert type(described[0]["isolation"]) is str
    assert described[1]["isolation"] is None
    assert described[1]["parameters"]["properties"] == {
        "userId": {"type": "string", "description": "who"},
        "tags": {"type": "array", "default": ["a"]},
    }
    assert described[1]["parameters"]["required"] == ["userId"]


def test_an_empty_registry_describes_nothing() -> None:
    assert ActionRegistry().describe() == []


def test_json_schema_is_a_copy() -> None:
    registry = ActionRegistry()
    action = registry.register_simple_action(
        "a", "", [{"name": "xs", "type": "array", "required": False, "default": [1]}], run
    )
    action.json_schema()["properties"]["xs"]["default"].append(2)
    assert action.json_schema()["properties"]["xs"]["default"] == [1]


# --------------------------------------------------------------------------------------------
# Registration errors
# --------------------------------------------------------------------------------------------


def test_a_duplicate_name_is_refused_not_overridden() -> None:
    registry = ActionRegistry()
    first = registry.register_simple_action("a", "first", [], run)
    with pytest.raises(
        ActionRegistrationError,
        match="action 'a' is already registered; action names must be unique",
    ):
        registry.register_database_action("a", "second", [], "SERIALIZABLE", run)
    with pytest.raises(ActionRegistrationError, match="already registered"):
        registry.register(first)
    assert registry.get("a") is first


@pytest.mark.parametrize(
    ("register", "message"),
    [
        (
            lambda r: r.register_simple_action("", "", [], run),
            "an action needs a non-empty name, not ''",
        ),
        (
            lambda r: r.register_simple_action("1st", "", [], run),
            "invalid action name '1st': use letters, digits, '_', '.' and '-', starting with a "
            "letter",
        ),
        (
            lambda r: r.register_simple_action("a b", "", [], run),
            "invalid action name 'a b': use letters",
        ),
        (
            lambda r: r.action()(lambda params, ctx: None),
            "invalid action name '<lambda>': use letters",
        ),
        (
            lambda r: r.register_database_action("a", "", [], "SNAPSHOT", run),
            "action 'a': unknown isolation level 'SNAPSHOT'; use one of READ UNCOMMITTED, "
            "READ COMMITTED, REPEATABLE READ, SERIALIZABLE",
        ),
        (
            lambda r: r.action("a", isolation="CHAOS")(run),
            "action 'a': unknown isolation level 'CHAOS'; use one of READ UNCOMMITTED, "
            "READ COMMITTED, REPEATABLE READ, SERIALIZABLE",
        ),
        (
            lambda r: r.action("a", params=dict)(run),
            "action 'a': params must be an attrs class (or None for an action without "
            "parameters), not dict",
        ),
        (
            lambda r: r.action("a", params=[Param(name="x")])(run),
            "action 'a': params must be an attrs class (or None for an action without "
            "parameters), not [Param(name='x'",
        ),
        (
            lambda r: r.register_simple_action("a", "", Transfer, run),
            "action 'a': params must be a list of Param or mappings here; to use the attrs "
            "class Transfer as the schema, register with the action decorator",
        ),
        (
            lambda r: r.register_simple_action("a", "", "userId", run),
            "action 'a': params must be a list of Param or mappings, not str",
        ),
        (
            lambda r: r.register_simple_action("a", "", [3], run),
            "action 'a': parameter 0 must be a Param or a mapping, not int",
        ),
        (
            lambda r: r.action("a", params=Unsupported)(run),
            "action 'a': Unsupported.when: set[int] has no JSON form the registry knows; use "
            "str, int, float, bool, Any,",
        ),
        (
            lambda r: r.action("a", params=Node)(run),
            "action 'a': Node.children: Node contains itself",
        ),
    ],
)
def test_registration_errors_say_what_is_wrong(
    register: Callable[[ActionRegistry], object], message: str
) -> None:
    assert registration_error(register).startswith(message)


def one(params: Any) -> None: ...


def three(params: Any, ctx: ActionContext, extra: int) -> None: ...


def keyword_only(params: Any, ctx: ActionContext, *, flag: bool) -> None: ...


def flexible(*args: Any, **kwargs: Any) -> None: ...


def defaulted(params: Any, ctx: ActionContext, extra: int = 0) -> None: ...


@pytest.mark.parametrize(
    ("fn", "shown"),
    [
        (one, "one(params: 'Any') -> 'None'"),
        (three, "three(params: 'Any', ctx: 'ActionContext', extra: 'int') -> 'None'"),
        (
            keyword_only,
            "keyword_only(params: 'Any', ctx: 'ActionContext', *, flag: 'bool') -> 'None'",
        ),
    ],
)
def test_a_function_that_cannot_take_params_and_ctx_is_refused(
    fn: Callable[..., Any], shown: str
) -> None:
    message = registration_error(lambda r: r.register_simple_action("a", "", [], fn))
    assert message == (
        f"action 'a': {shown} cannot be called as fn(params, ctx); an action function takes "
        "two positional arguments"
    )


@pytest.mark.parametrize("fn", [flexible, defaulted, SyncCallable(), print])
def test_functions_that_accept_two_positional_arguments_are_accepted(
    fn: Callable[..., Any],
) -> None:
    ActionRegistry().register_simple_action("a", "", [], fn)


def test_a_non_callable_is_refused() -> None:
    message = registration_error(
        lambda r: r.register_simple_action("a", "", [], "run")  # type: ignore[arg-type]
    )
    assert message == "action 'a': fn must be callable, not str"


def test_the_decorator_needs_parentheses() -> None:
    message = registration_error(lambda r: r.action(run))  # type: ignore[arg-type]
    assert message == "use the action decorator with parentheses: @registry.action()"


def test_only_actions_can_be_registered() -> None:
    message = registration_error(lambda r: r.register(run))  # type: ignore[arg-type]
    assert message == "expected an Action, got function"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"kind": "simple", "isolation": Isolation.SERIALIZABLE, "params": ()},
            "action 'a': only a database action has an isolation level",
        ),
        (
            {"kind": "database", "params": ()},
            "action 'a': a database action needs an isolation level",
        ),
        (
            {"kind": "batch", "params": ()},
            "action 'a': unknown kind 'batch'; use simple or database",
        ),
        (
            {},
            "action 'a': give exactly one schema: params (a list of Param) or params_class "
            "(an attrs class)",
        ),
        (
            {"params": (), "params_class": Transfer},
            "action 'a': give exactly one schema",
        ),
        (
            {"params": (), "fn": run_async, "is_async": False},
            "action 'a': fn is an async function but is_async is false",
        ),
        (
            {"params": (), "description": None},
            "action 'a': description must be a string",
        ),
        (
            {
                "kind": "database",
                "isolation": Isolation.READ_COMMITTED,
                "params": (),
                "checkpoint": False,
            },
            "action 'a': a database action is always checkpointed (its effect and its result "
            "commit together); checkpoint=False is for simple actions",
        ),
        (
            {"params": (), "checkpoint": "no"},
            "action 'a': checkpoint must be true or false",
        ),
        (
            {"params_class": Transfer, "additional_params": True},
            "action 'a': additional_params needs a list of Param; an attrs class refuses fields "
            "it does not declare",
        ),
        (
            {"params": (), "additional_params": "yes"},
            "action 'a': additional_params must be true or false",
        ),
    ],
)
def test_an_inconsistent_action_cannot_be_built(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ActionRegistrationError) as info:
        Action(**{"name": "a", "fn": run, **fields})
    assert str(info.value).startswith(message)


def test_an_action_built_directly_normalises_its_params_and_isolation() -> None:
    action = Action(
        name="a",
        kind="database",
        isolation="read committed",  # type: ignore[arg-type]
        params=[{"name": "x", "type": "integer"}],  # type: ignore[arg-type]
        fn=run,
    )
    assert action.isolation is Isolation.READ_COMMITTED
    assert action.params == (Param(name="x", type="integer"),)


# --------------------------------------------------------------------------------------------
# Param errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("param", "message"),
    [
        (
            {"name": "x", "type": "str"},
            "action 'a': parameter 'x': unknown type 'str'; use one of string, integer, number, "
            "boolean, object, array, any",
        ),
        (
            {"name": "x", "type": "integer", "default": 3},
            "action 'a': parameter 'x' is required and has a default; a default only applies to "
            "an optional parameter (required=False)",
        ),
        (
            {"name": "x", "type": "integer", "required": False, "default": "3"},
            "action 'a': parameter 'x': the default does not match its type: expected integer, "
            "got string",
        ),
        (
            {"name": "x", "type": "number", "required": False, "default": True},
            "action 'a': parameter 'x': the default does not match its type: expected number, "
            "got boolean",
        ),
        (
            {"name": "x", "required": False, "default": {1, 2}},
            "action 'a': parameter 'x': the default {1, 2} is not a JSON value",
        ),
        (
            {"name": "x", "required": "yes"},
            "action 'a': parameter 'x': required must be true or false, not 'yes'",
        ),
        (
            {"name": "x", "description": 3},
            "action 'a': parameter 'x': description must be a string, not 3",
        ),
        (
            {"name": "", "type": "string"},
            "action 'a': a parameter needs a non-empty string name, not ''",
        ),
        (
            {"type": "string"},
            "action 'a': a parameter needs a name: {'type': 'string'}",
        ),
        (
            {"name": "x", "requird": False},
            "action 'a': parameter 'x': unknown key 'requird'; a parameter has name, type, "
            "required, default, description",
        ),
    ],
)
def test_param_errors_name_the_action_and_the_parameter(
    param: dict[str, Any], message: str
) -> None:
    assert registration_error(lambda r: r.register_simple_action("a", "", [param], run)) == message


def test_a_parameter_declared_twice_is_refused() -> None:
    message = registration_error(
        lambda r: r.register_simple_action("a", "", [{"name": "x"}, {"name": "x"}], run)
    )
    assert message == "action 'a': parameter 'x' is declared more than once"


def test_params_are_checked_when_built() -> None:
    with pytest.raises(ActionRegistrationError, match="parameter 'x': unknown type 'int'"):
        Param(name="x", type="int")  # type: ignore[arg-type]
    assert Param(name="x").default is NO_DEFAULT
    assert not Param(name="x").has_default
    assert Param(name="x", required=False, default=None).has_default


def test_a_param_keeps_its_own_copy_of_its_default() -> None:
    default: list[int] = [1]
    param = Param(name="x", type="array", required=False, default=default)
    default.append(2)
    assert param.default == [1]


def test_a_class_whose_type_hints_cannot_be_resolved_is_refused() -> None:
    @attrs.frozen
    class Local:
        value: int

    @attrs.frozen
    class Outer:
        inner: Local

    message = registration_error(lambda r: r.action("a", params=Outer)(run))
    assert message == (
        "action 'a': the type hints of "
        "test_a_class_whose_type_hints_cannot_be_resolved_is_refused.<locals>.Outer cannot be "
        "resolved (name 'Local' is not defined); define the classes it uses at module level"
    )


def test_every_way_of_registering_a_simple_action_can_leave_it_unchecked() -> None:
    """``checkpoint=False`` reaches the action by each registration path, and is shown."""
    registry = ActionRegistry()
    registry.register_simple_action("quick.one", "", [], run, checkpoint=False)
    registry.action("quick.two", checkpoint=False)(run)
    registry.register_simple_action("kept", "", [], run)
    assert registry.get("quick.one").checkpoint is False
    assert registry.get("quick.two").checkpoint is False
    assert registry.get("kept").checkpoint is True
    assert {a["name"]: a["checkpoint"] for a in registry.describe()} == {
        "kept": True,
        "quick.one": False,
        "quick.two": False,
    }
    with pytest.raises(ActionRegistrationError, match="always checkpointed"):
        registry.action("db.write", isolation="READ COMMITTED", checkpoint=False)(run)
