"""Each hook family with a real plugin object: registration, life cycle, retry policy,
compensation, circuit breaker override and the step wrapper; broken plugins are named and the
rest go on."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from ledgerflow import definitions
from ledgerflow.breakers import BreakerPolicy, BreakerState
from ledgerflow.engine import Engine
from ledgerflow.errors import InvalidInputError, PluginError
from ledgerflow.expressions import ExpressionFunction, reset_functions
from ledgerflow.hookspecs import RetryDecision, StepInfo, hookimpl
from ledgerflow.model import JSON, ExecutionFailed, StepCompensated, StepFailed, StepSucceeded
from ledgerflow.plugins import Plugins
from ledgerflow.registry import ActionContext, ActionRegistry
from ledgerflow.store.sql import SQLStore
from ledgerflow.worker import Worker

TENANT = "acme"

WORKFLOW: dict[str, Any] = {
    "name": "Orders",
    "version": 1,
    "initial_state": "new",
    "states": ["new", "open", "closed"],
    "terminal_states": ["closed"],
    "transitions": [
        {
            "from": "new",
            "to": "open",
            "on": "Open",
            "condition": "t.double(payload.n) == 4",
            "steps": [
                {"id": "a", "action": "t.ok", "params": {"n": {"expr": "t.double(payload.n)"}}},
                {
                    "id": "tell",
                    "action": "ledgerflow.notify",
                    "depends_on": ["a"],
                    "params": {"channel": "sales", "message": "opened", "notifier": "memo"},
                },
            ],
        },
        {
            "from": "open",
            "to": "open",
            "on": "Poke",
            "steps": [
                {
                    "id": "poke",
                    "action": "t.flaky",
                    "on_error": {"strategy": "retry", "attempts": 3, "backoff": {"initial": 5}},
                }
            ],
        },
        {
            "from": "open",
            "to": "closed",
            "on": "Close",
            "steps": [
                {"id": "reserve", "action": "t.ok", "params": {"n": 1}},
                {
                    "id": "charge",
                    "action": "t.flaky",
                    "depends_on": ["reserve"],
                    "on_error": {"strategy": "compensate"},
                },
            ],
        },
        {
            "from": "open",
            "to": "open",
            "on": "Call",
            "steps": [{"id": "call", "action": "t.guarded", "on_error": {"strategy": "continue"}}],
        },
    ],
}


def double(n: JSON) -> JSON:
    assert isinstance(n, int)
    return n * 2


DOUBLE = ExpressionFunction(name="t.double", fn=double, params=("int",), result="int")


class Memo:
    """A notifier that keeps what it was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []

    def send(
        self, channel: str, message: str, options: Any, context: ActionContext
    ) -> dict[str, str]:
        self.sent.append((channel, message, context.idempotency_key))
        return {"notifier": "memo"}


class Shop:
    """A plugin: actions, a notifier and an expression function."""

    def __init__(self) -> None:
        self.memo = Memo()
        self.failures: list[BaseException] = []
        self.flaky_calls = 0
        self.guarded_calls = 0

    def flaky(self, params: Any, context: ActionContext) -> str:
        self.flaky_calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "ok"

    def guarded(self, params: Any, context: ActionContext) -> str:
        self.guarded_calls += 1
        raise ConnectionError("remote down")

    @hookimpl
    def ledgerflow_register_actions(self, registry: ActionRegistry) -> None:
        registry.register_simple_action(
            "t.ok", "Returns its n.", [{"name": "n", "type": "integer"}], lambda p, c: p["n"]
        )
        registry.register_simple_action("t.flaky", "Fails as told.", [], self.flaky)
        registry.register_simple_action(
            "t.guarded",
            "Always down.",
            [],
            self.guarded,
            breaker=BreakerPolicy(failures=1, reset_after=3600),
        )

    @hookimpl
    def ledgerflow_register_notifiers(self, notifiers: dict[str, Any]) -> None:
        notifiers["memo"] = self.memo

    @hookimpl
    def ledgerflow_register_expression_functions(self, functions: list[ExpressionFunction]) -> None:
        functions.append(DOUBLE)


class Recorder:
    """A plugin that notes every life-cycle hook, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.lock = threading.Lock()

    def note(self, *call: Any) -> None:
        with self.lock:
            self.calls.append(call)

    @hookimpl
    def ledgerflow_execution_created(self, workflow: str, version: int) -> None:
        self.note("created", workflow, version)

    @hookimpl
    def ledgerflow_event_enqueued(self, event: str) -> None:
        self.note("enqueued", event)

    @hookimpl
    def ledgerflow_step_started(self, step: StepInfo) -> None:
        self.note("step_started", step.step_id, step.compensation)

    @hookimpl
    def ledgerflow_step_succeeded(self, step: StepInfo, attempts: int) -> None:
        self.note("step_succeeded", step.step_id, attempts)

    @hookimpl
    def ledgerflow_step_failed(self, step: StepInfo, attempts: int) -> None:
        self.note("step_failed", step.step_id, attempts)

    @hookimpl
    def ledgerflow_step_retried(self, step: StepInfo, attempt: int, wait: float) -> None:
        self.note("step_retried", step.step_id, attempt, wait)

    @hookimpl
    def ledgerflow_step_compensated(self, step: StepInfo) -> None:
        self.note("step_compensated", step.step_id)

    @hookimpl
    def ledgerflow_transition_applied(self, source: str, target: str) -> None:
        self.note("transition_applied", source, target)

    @hookimpl
    def ledgerflow_event_processed(self, event: str, status: str, outcome: str) -> None:
        self.note("event_processed", event, status, outcome)

    @hookimpl
    def ledgerflow_event_rejected(self, event: str, reason: str) -> None:
        self.note("event_rejected", event, reason)

    @hookimpl
    def ledgerflow_execution_completed(self, state: str) -> None:
        self.note("completed", state)

    @hookimpl
    def ledgerflow_execution_failed(self) -> None:
        self.note("failed")

    @hookimpl
    def ledgerflow_worker_started(self, concurrency: int) -> None:
        self.note("worker_started", concurrency)

    @hookimpl
    def ledgerflow_worker_stopping(self) -> None:
        self.note("worker_stopping")


@pytest.fixture(autouse=True)
def fresh_functions() -> Iterator[None]:
    reset_functions()
    yield
    reset_functions()


@pytest.fixture
def shop() -> Shop:
    return Shop()


def engine_with(url: str, *plugins: object) -> Engine:
    """An engine with ledgerflow's own plugin and ``plugins`` (no installed ones, so the test
    sees only what it registers)."""
    manager = Plugins(entry_points=False, disabled=())
    for plugin in plugins:
        manager.register(plugin, type(plugin).__name__)
    engine = Engine(url, plugins=manager)
    engine.register(definitions.compile_workflow(definitions.parse(WORKFLOW)))
    return engine


@pytest.fixture
def orders(db_url: str, shop: Shop) -> Iterator[Engine]:
    engine = engine_with(db_url, shop)
    yield engine
    engine.close()


def drain(engine: Engine) -> None:
    Worker(engine, poll_interval=0.01).run_once()


def opened(engine: Engine) -> str:
    execution_id = engine.create_execution("Orders", tenant=TENANT)
    engine.enqueue_event(execution_id, "Open", tenant=TENANT, payload={"n": 2})
    drain(engine)
    return execution_id


def test_a_plugin_registers_actions_notifiers_and_expression_functions(
    orders: Engine, shop: Shop
) -> None:
    execution_id = opened(orders)
    assert orders.get_execution(execution_id, tenant=TENANT).state == "open"
    steps = [
        h.record for h in orders.history(execution_id, tenant=TENANT) if h.kind == "step_succeeded"
    ]
    assert [(s.step_id, s.result) for s in steps if isinstance(s, StepSucceeded)] == [
        ("a", 4),
        ("tell", {"notifier": "memo"}),
    ]
    assert [(c, m) for c, m, _ in shop.memo.sent] == [("sales", "opened")]
    assert shop.memo.sent[0][2].endswith(":tell")
    info = {p.name: p for p in orders.plugins.describe()}
    assert info["Shop"].registered == {
        "notifiers": ("memo",),
        "expression_functions": ("t.double",),
        "actions": ("t.flaky", "t.guarded", "t.ok"),
    }
    assert info["Shop"].source == "code"
    builtin = info["ledgerflow.builtin"]
    assert builtin.source == "builtin"
    assert "ledgerflow.notify" in builtin.registered["actions"]
    assert builtin.registered["stores"] == ("sqlite", "postgresql")
    assert builtin.registered["transports"] == ("database",)
    assert builtin.registered["notifiers"] == ("log",)


def test_life_cycle_hooks_follow_what_was_committed(db_url: str, shop: Shop) -> None:
    recorder = Recorder()
    engine = engine_with(db_url, shop, recorder)
    try:
        execution_id = opened(engine)
        engine.enqueue_event(execution_id, "Open", tenant=TENANT, payload={"n": 2})
        engine.enqueue_event(execution_id, "Close", tenant=TENANT)
        Worker(engine, poll_interval=0.01).run(until_idle=True)
    finally:
        engine.close()
    assert recorder.calls == [
        ("created", "Orders", 1),
        ("enqueued", "Open"),
        ("step_started", "a", False),
        ("step_succeeded", "a", 1),
        ("step_started", "tell", False),
        ("step_succeeded", "tell", 1),
        ("transition_applied", "new", "open"),
        ("event_processed", "Open", "processed", "applied"),
        ("enqueued", "Open"),
        ("enqueued", "Close"),
        ("worker_started", 1),
        ("event_rejected", "Open", "no_transition"),
        ("event_processed", "Open", "rejected", "no_transition"),
        ("step_started", "reserve", False),
        ("step_succeeded", "reserve", 1),
        ("step_started", "charge", False),
        ("step_succeeded", "charge", 1),
        ("transition_applied", "open", "closed"),
        ("event_processed", "Close", "processed", "applied"),
        ("completed", "closed"),
        ("worker_stopping",),
    ]


class Policy:
    """Retries connection errors at once; never retries a permission error."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str, int]] = []

    @hookimpl
    def ledgerflow_retry_policy(
        self, action: str, error: BaseException, attempt: int
    ) -> RetryDecision | None:
        self.asked.append((action, type(error).__name__, attempt))
        if isinstance(error, PermissionError):
            return RetryDecision(retry=False)
        if isinstance(error, ConnectionError):
            return RetryDecision(retry=True, wait=0.0)
        return None


class BrokenPolicy:
    @hookimpl
    def ledgerflow_retry_policy(self) -> RetryDecision | None:
        raise RuntimeError("policy bug")


def test_a_retry_policy_decides_per_action_and_error(db_url: str, shop: Shop) -> None:
    policy, recorder = Policy(), Recorder()
    engine = engine_with(db_url, shop, BrokenPolicy(), policy, recorder)
    try:
        execution_id = opened(engine)
        shop.failures = [ConnectionError("reset"), ConnectionError("reset")]
        started = time.monotonic()
        engine.enqueue_event(execution_id, "Poke", tenant=TENANT)
        drain(engine)
        assert time.monotonic() - started < 4  # the step's own backoff would wait 5 s and more
        retried = [c for c in recorder.calls if c[0] == "step_retried"]
        assert retried == [("step_retried", "poke", 1, 0.0), ("step_retried", "poke", 2, 0.0)]
        assert shop.flaky_calls == 3

        shop.failures = [PermissionError("no")]
        engine.enqueue_event(execution_id, "Poke", tenant=TENANT)
        drain(engine)
        assert shop.flaky_calls == 4  # not retried
        failed = engine.history(execution_id, tenant=TENANT)[-2].record
        assert isinstance(failed, StepFailed)
        assert (failed.step_id, failed.attempts) == ("poke", 1)
        assert policy.asked[-1] == ("t.flaky", "PermissionError", 1)
        # the broken policy, registered first, is asked last: the working one answered first
        assert "BrokenPolicy" not in {p.name for p in engine.plugins.describe() if p.errors}
    finally:
        engine.close()


class Undo:
    """Compensates steps of ``t.ok`` that declare no compensating action."""

    def __init__(self) -> None:
        self.undone: list[tuple[str, JSON]] = []

    @hookimpl
    def ledgerflow_compensate(self, step: StepInfo, result: JSON) -> JSON | None:
        if step.action != "t.ok":
            return None
        self.undone.append((step.step_id, result))
        return {"undid": step.step_id}


def test_a_plugin_compensates_a_step_that_declares_no_compensating_action(
    db_url: str, shop: Shop
) -> None:
    undo = Undo()
    engine = engine_with(db_url, shop, undo)
    try:
        execution_id = opened(engine)
        shop.failures = [ValueError("card declined")]
        engine.enqueue_event(execution_id, "Close", tenant=TENANT)
        drain(engine)
        assert undo.undone == [("reserve", 1)]
        history = engine.history(execution_id, tenant=TENANT)
        compensated = [h.record for h in history if isinstance(h.record, StepCompensated)]
        assert [(c.step_id, c.result) for c in compensated] == [("reserve", {"undid": "reserve"})]
        assert history[-1].kind == "transition_reverted"
        execution = engine.get_execution(execution_id, tenant=TENANT)
        assert (execution.state, execution.status.value) == ("open", "active")
    finally:
        engine.close()


class Gate:
    def __init__(self, verdict: str | None) -> None:
        self.verdict = verdict
        self.seen: list[BreakerState] = []

    @hookimpl
    def ledgerflow_circuit_breaker(self, action: str, state: BreakerState) -> str | None:
        self.seen.append(state)
        return self.verdict


def test_a_plugin_can_override_a_circuit_breaker(db_url: str, shop: Shop) -> None:
    gate = Gate(None)
    engine = engine_with(db_url, shop, gate)
    try:
        execution_id = opened(engine)
        for _ in range(2):
            engine.enqueue_event(execution_id, "Call", tenant=TENANT)
        drain(engine)
        assert shop.guarded_calls == 1  # one failure opened the circuit; the second was refused
        assert [s.state for s in gate.seen] == ["closed", "open"]

        gate.verdict = "allow"  # e.g. an operator forcing calls through
        engine.enqueue_event(execution_id, "Call", tenant=TENANT)
        drain(engine)
        assert shop.guarded_calls == 2

        engine.runner.breakers.reset("t.guarded")  # type: ignore[attr-defined]
        gate.verdict = "refuse"  # e.g. a maintenance window
        engine.enqueue_event(execution_id, "Call", tenant=TENANT)
        drain(engine)
        assert shop.guarded_calls == 2
        failed = engine.history(execution_id, tenant=TENANT)[-1].record
        assert isinstance(failed, StepFailed)
        assert "refused by a plugin" in failed.error
    finally:
        engine.close()


class Timer:
    """A step wrapper: times every attempt; can be told to fail them."""

    def __init__(self) -> None:
        self.timed: list[tuple[str, float]] = []
        self.fail = False

    @hookimpl(wrapper=True)
    def ledgerflow_run_step(self, step: StepInfo) -> Generator[None, JSON, JSON]:
        started = time.perf_counter()
        if self.fail:
            raise RuntimeError("tracer refused")
        result = yield
        self.timed.append((step.step_id, time.perf_counter() - started))
        return result


def test_a_step_wrapper_sees_every_step_and_can_fail_it(db_url: str, shop: Shop) -> None:
    timer = Timer()
    engine = engine_with(db_url, shop, timer)
    try:
        execution_id = opened(engine)
        assert [step for step, _ in timer.timed] == ["a", "tell"]
        assert all(seconds >= 0 for _, seconds in timer.timed)
        timer.fail = True
        assert engine.get_execution(execution_id, tenant=TENANT).state == "open"
        second = opened(engine)
        history = engine.history(second, tenant=TENANT)
        failed = history[-2].record
        assert isinstance(failed, StepFailed)
        assert (failed.step_id, failed.error) == ("a", "RuntimeError: tracer refused")
        assert history[-1].kind == "execution_failed"
        assert [step for step, _ in timer.timed] == ["a", "tell"]
    finally:
        engine.close()


class Broken:
    @hookimpl
    def ledgerflow_register_actions(self, registry: ActionRegistry) -> None:
        raise RuntimeError("cannot reach the licence server")

    @hookimpl
    def ledgerflow_step_started(self, step: StepInfo) -> None:
        raise ValueError("observer bug")


class Squatter:
    @hookimpl
    def ledgerflow_register_actions(self, registry: ActionRegistry) -> None:
        registry.register_simple_action("t.ok", "Another t.ok.", [], lambda p, c: None)


def test_a_broken_plugin_is_named_and_the_others_go_on(
    db_url: str, shop: Shop, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="ledgerflow.plugins")
    engine = engine_with(db_url, shop, Broken(), Squatter())
    try:
        execution_id = opened(engine)
        assert engine.get_execution(execution_id, tenant=TENANT).state == "open"
    finally:
        engine.close()
    errors = {p.name: p.errors for p in engine.plugins.describe()}
    assert errors["Broken"][0] == (
        "ledgerflow_register_actions failed: RuntimeError: cannot reach the licence server"
    )
    assert "ledgerflow_step_started raised ValueError: observer bug" in errors["Broken"]
    assert errors["Squatter"] == ("action 't.ok' is already registered; left out",)
    assert errors["Shop"] == ()
    assert "plugin Broken failed in ledgerflow_step_started" in caplog.text


def test_plugins_that_cannot_fit_are_refused_with_their_name() -> None:
    class Misfit:
        @hookimpl
        def ledgerflow_step_started(self, step: StepInfo, colour: str) -> None:
            """Asks for an argument the hook does not have."""

    manager = Plugins(entry_points=False)
    with pytest.raises(PluginError, match="plugin misfit"):
        manager.register(Misfit(), "misfit")
    manager.register(Recorder(), "recorder")
    with pytest.raises(PluginError, match="plugin recorder: a plugin of that name"):
        manager.register(Recorder(), "recorder")
    disabled = Plugins(entry_points=False, disabled=["recorder"])
    disabled.register(Recorder(), "recorder")
    assert [(p.name, p.disabled) for p in disabled.describe()][-1] == ("recorder", True)


class TmpStores:
    @hookimpl
    def ledgerflow_register_stores(self, stores: dict[str, Any]) -> None:
        def in_folder(url: str, **options: Any) -> SQLStore:
            return SQLStore("sqlite:///" + url.removeprefix("folder://") + "/ledger.db", **options)

        stores["folder"] = in_folder


def test_stores_and_transports_are_found_by_scheme(tmp_path: Path) -> None:
    manager = Plugins(entry_points=False)
    manager.register(TmpStores())
    engine = Engine(f"folder://{tmp_path}", plugins=manager)
    try:
        engine.store.upgrade()
        assert (tmp_path / "ledger.db").exists()
        assert type(Worker(engine).transport).__name__ == "DatabaseTransport"
        with pytest.raises(InvalidInputError, match="no transport for brokers of scheme 'redis'"):
            Worker(engine, broker="redis://127.0.0.1:6379")
    finally:
        engine.close()
    with pytest.raises(InvalidInputError, match=r"no store for URLs of scheme 'mysql' \(known: "):
        Engine("mysql://db/x", plugins=manager)


def test_a_misspelt_hook_is_an_error_naming_the_plugin() -> None:
    class Typo:
        @hookimpl
        def ledgerflow_step_sucseeded(self, step: StepInfo) -> None:
            """Never called: no hook has this name."""

    manager = Plugins(entry_points=False)
    with pytest.raises(PluginError, match=r"plugin typo: .*ledgerflow_step_sucseeded"):
        manager.register(Typo(), "typo")
    assert "typo" not in {p.name for p in manager.describe()}
    manager.register(Recorder(), "after-the-typo")  # the manager is still usable


def test_a_plain_run_step_implementation_is_refused() -> None:
    class Plain:
        @hookimpl
        def ledgerflow_run_step(self, call: Any) -> JSON:
            return call()  # returns None for an action whose result is None: run twice

    manager = Plugins(entry_points=False)
    with pytest.raises(PluginError, match="ledgerflow_run_step must be a wrapper"):
        manager.register(Plain(), "plain")


def test_the_retry_policy_is_asked_only_within_a_retry_steps_attempts(
    db_url: str, shop: Shop
) -> None:
    policy = Policy()
    engine = engine_with(db_url, shop, policy)
    try:
        execution_id = opened(engine)
        shop.failures = [ConnectionError("a"), ConnectionError("b"), ConnectionError("c")]
        engine.enqueue_event(execution_id, "Poke", tenant=TENANT)  # retry, attempts 3
        drain(engine)
        assert policy.asked == [
            ("t.flaky", "ConnectionError", 1),
            ("t.flaky", "ConnectionError", 2),
        ]
        shop.failures = [ConnectionError("d")]
        engine.enqueue_event(execution_id, "Close", tenant=TENANT)  # compensate: never retried
        drain(engine)
        assert len(policy.asked) == 2
    finally:
        engine.close()


class LogSquatter:
    @hookimpl
    def ledgerflow_register_notifiers(self, notifiers: dict[str, Any]) -> None:
        notifiers["log"] = Memo()


def test_a_late_plugin_cannot_take_a_notifier_name_and_is_told(tmp_path: Path) -> None:
    engine = Engine(f"sqlite:///{tmp_path}/n.db", plugins=Plugins(entry_points=False))
    try:
        engine.add_plugin(LogSquatter(), "squatter", source="app")
        assert type(engine.notifiers["log"]).__name__ == "LogNotifier"
        errors = {p.name: p.errors for p in engine.plugins.describe()}
        assert errors["squatter"] == ("notifiers 'log' is already registered; left out",)
    finally:
        engine.close()


def test_engines_sharing_a_registry_get_each_plugins_actions_once(
    tmp_path: Path, shop: Shop
) -> None:
    registry = ActionRegistry()
    first = engine_with_registry(f"sqlite:///{tmp_path}/a.db", registry, shop)
    second = engine_with_registry(f"sqlite:///{tmp_path}/b.db", registry, shop)
    try:
        for engine in (first, second):
            assert all(not p.errors for p in engine.plugins.describe())
        assert "t.ok" in registry
    finally:
        first.close()
        second.close()


def engine_with_registry(url: str, registry: ActionRegistry, *plugins: object) -> Engine:
    manager = Plugins(entry_points=False, disabled=())
    for plugin in plugins:
        manager.register(plugin, type(plugin).__name__)
    return Engine(url, registry=registry, plugins=manager)


class Reversals:
    def __init__(self) -> None:
        self.seen: list[tuple[str, ...]] = []

    @hookimpl
    def ledgerflow_transition_reverted(self, source: str, target: str) -> None:
        self.seen.append(("reverted", source, target))

    @hookimpl
    def ledgerflow_execution_resumed(self, requested_by: str | None) -> None:
        self.seen.append(("resumed", str(requested_by)))


def test_reversals_and_resumptions_are_told(db_url: str, shop: Shop) -> None:
    reversals = Reversals()
    engine = engine_with(db_url, shop, Undo(), Policy(), reversals)
    try:
        execution_id = opened(engine)
        shop.failures = [ValueError("declined")]
        engine.enqueue_event(execution_id, "Close", tenant=TENANT)
        drain(engine)
        second = opened(engine)
        shop.failures = [ConnectionError("x")] * 3  # retried at once by the policy, then failed
        engine.enqueue_event(second, "Poke", tenant=TENANT)
        drain(engine)
        shop.failures = []
        engine.retry(second, tenant=TENANT, requested_by="ops")
        drain(engine)
        assert reversals.seen == [("reverted", "closed", "open"), ("resumed", "ops")]
    finally:
        engine.close()


class UndoWithNaN(Undo):
    """Compensates as Undo does, but answers with a result the ledger cannot store."""

    @hookimpl
    def ledgerflow_compensate(self, step: StepInfo, result: JSON) -> JSON | None:
        self.undone.append((step.step_id, result))
        return {"undid": math.nan}


def test_a_plugins_compensation_result_the_ledger_cannot_hold_fails_the_compensation(
    db_url: str, shop: Shop
) -> None:
    """The compensation failed (UnstorableResultError), as an action's refused result fails its
    step: the event is decided, and nothing is recorded as compensated."""
    undo = UndoWithNaN()
    engine = engine_with(db_url, shop, undo)
    try:
        execution_id = opened(engine)
        shop.failures = [ValueError("card declined")]
        event_id = engine.enqueue_event(execution_id, "Close", tenant=TENANT)
        drain(engine)
        assert undo.undone == [("reserve", 1)]
        assert engine.event_status(event_id, tenant=TENANT).status != "pending"
        history = engine.history(execution_id, tenant=TENANT)
        assert not [h for h in history if isinstance(h.record, StepCompensated)]
        failed = history[-1].record
        assert isinstance(failed, ExecutionFailed)
        assert failed.reason.startswith("compensating step 'reserve' failed: UnstorableResultError")
        assert engine.get_execution(execution_id, tenant=TENANT).status.value == "failed"
    finally:
        engine.close()
