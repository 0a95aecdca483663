"""Circuit breakers: state shared by every worker through the store, on SQLite and PostgreSQL.

Time is a fake clock, a plain mutable object handed to every CircuitBreakers (the clock is
injectable by design), so nothing here sleeps. Two workers are two CircuitBreakers over two
SQLStore objects on the same database, each with its own connection pool.
"""

from __future__ import annotations

import contextlib
import functools
import math
import pickle
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Connection

from ledgerflow.breakers import BreakerPolicy, BreakerState, CircuitBreakers, CircuitState
from ledgerflow.errors import (
    ActionRegistrationError,
    CircuitOpenError,
    InvalidInputError,
    StoreUnavailableError,
)
from ledgerflow.registry import Action, ActionContext, ActionRegistry
from ledgerflow.store.sql import SQLStore

POLICY = BreakerPolicy(failures=3, reset_after=10.0)


@attrs.define
class FakeClock:
    """The time, moved by hand."""

    now: float = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingStore(SQLStore):
    """A store that counts the write transactions it opens."""

    writes = 0

    @contextlib.contextmanager
    def write(
        self, isolation: str | None = None, *, tenant: str | None = None
    ) -> Iterator[Connection]:
        self.writes += 1
        with super().write(isolation, tenant=tenant) as conn:
            yield conn


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(db_url: str) -> Iterator[CountingStore]:
    store = CountingStore(db_url)
    yield store
    store.close()


@pytest.fixture
def breakers(store: CountingStore, clock: FakeClock) -> CircuitBreakers:
    return CircuitBreakers(store, clock=clock)


@pytest.fixture
def other_worker(db_url: str, clock: FakeClock) -> Iterator[CircuitBreakers]:
    """A second worker process's breakers: its own store object on the same database."""
    store = SQLStore(db_url)
    yield CircuitBreakers(store, clock=clock)
    store.close()


def refusal(breakers: CircuitBreakers, action: str, policy: BreakerPolicy) -> CircuitOpenError:
    with pytest.raises(CircuitOpenError) as caught:
        breakers.admit(action, policy)
    return caught.value


def open_circuit(breakers: CircuitBreakers, action: str, policy: BreakerPolicy = POLICY) -> None:
    for n in range(policy.failures):
        breakers.failure(action, policy, f"ConnectionError: refused ({n + 1})")
    assert breakers.state(action).state == "open"


def run_together(calls: Sequence[Callable[[], Any]]) -> list[Any]:
    """Run every call in its own thread, all released at once; each result or exception."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = calls[index]()
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


# --------------------------------------------------------------------------------------------
# Closed, open, half-open
# --------------------------------------------------------------------------------------------


def test_an_action_that_never_failed_is_closed_and_admitted(
    breakers: CircuitBreakers, store: CountingStore
) -> None:
    breakers.admit("billing.charge", POLICY)
    breakers.success("billing.charge", POLICY)
    assert breakers.state("billing.charge") == BreakerState.never_failed("billing.charge")
    assert breakers.states() == []
    assert store.writes == 0


def test_the_circuit_opens_after_n_consecutive_failures(
    breakers: CircuitBreakers, clock: FakeClock
) -> None:
    breakers.failure("billing.charge", POLICY, "TimeoutError: 1")
    breakers.failure("billing.charge", POLICY, "TimeoutError: 2")
    breakers.admit("billing.charge", POLICY)
    assert breakers.state("billing.charge") == BreakerState(
        action="billing.charge",
        state="closed",
        failures=2,
        opened_at=None,
        last_error="TimeoutError: 2",
        updated_at=clock.now,
    )
    clock.advance(1)
    breakers.failure("billing.charge", POLICY, "TimeoutError: 3")
    state = breakers.state("billing.charge")
    assert (state.state, state.failures, state.opened_at) == ("open", 3, clock.now)
    assert state.last_error == "TimeoutError: 3"
    error = refusal(breakers, "billing.charge", POLICY)
    assert (error.action, error.retry_after, error.when_open) == ("billing.charge", 10.0, "fail")
    assert error.last_error == "TimeoutError: 3"
    assert str(error) == (
        "the circuit of action 'billing.charge' is open (last error: TimeoutError: 3); "
        "a call will be tried again in 10.0 s"
    )


def test_a_success_in_between_resets_the_count(breakers: CircuitBreakers) -> None:
    for _ in range(POLICY.failures - 1):
        breakers.failure("a", POLICY, "boom")
    breakers.success("a", POLICY)
    assert breakers.state("a").failures == 0
    for _ in range(POLICY.failures - 1):
        breakers.failure("a", POLICY, "boom")
    breakers.admit("a", POLICY)
    assert breakers.state("a").state == "closed"
    breakers.failure("a", POLICY, "boom")
    assert breakers.state("a").state == "open"


def test_the_count_is_shared_by_every_worker(
    breakers: CircuitBreakers, other_worker: CircuitBreakers
) -> None:
    breakers.failure("a", POLICY, "boom")
    other_worker.failure("a", POLICY, "boom")
    breakers.failure("a", POLICY, "boom")
    assert refusal(other_worker, "a", POLICY).retry_after == 10.0


def test_refused_while_open_with_the_seconds_left(
    breakers: CircuitBreakers, clock: FakeClock
) -> None:
    policy = BreakerPolicy(failures=2, reset_after=10.0, when_open="delay")
    open_circuit(breakers, "a", policy)
    clock.advance(4)
    error = refusal(breakers, "a", policy)
    assert (error.retry_after, error.when_open) == (6.0, "delay")
    clock.advance(5.5)
    assert refusal(breakers, "a", policy).retry_after == 0.5
    assert breakers.state("a").state == "open"


def test_a_successful_trial_closes_the_circuit(
    breakers: CircuitBreakers, other_worker: CircuitBreakers, clock: FakeClock
) -> None:
    open_circuit(breakers, "a")
    clock.advance(POLICY.reset_after)
    breakers.admit("a", POLICY)
    assert breakers.state("a").state == "half_open"
    assert refusal(other_worker, "a", POLICY).retry_after == POLICY.reset_after
    breakers.success("a", POLICY)
    state = breakers.state("a")
    assert (state.state, state.failures, state.opened_at) == ("closed", 0, None)
    assert state.last_error == "ConnectionError: refused (3)"  # kept for the status command
    other_worker.admit("a", POLICY)


def test_a_failed_trial_opens_the_circuit_again_from_then(
    breakers: CircuitBreakers, clock: FakeClock
) -> None:
    open_circuit(breakers, "a")
    clock.advance(POLICY.reset_after)
    breakers.admit("a", POLICY)
    clock.advance(1)
    breakers.failure("a", POLICY, "still down")
    state = breakers.state("a")
    assert (state.state, state.opened_at, state.last_error) == ("open", clock.now, "still down")
    assert refusal(breakers, "a", POLICY).retry_after == POLICY.reset_after
    clock.advance(POLICY.reset_after - 0.25)
    assert refusal(breakers, "a", POLICY).retry_after == 0.25
    clock.advance(0.25)
    breakers.admit("a", POLICY)


def test_an_abandoned_trial_is_replaced_after_another_reset_after(
    breakers: CircuitBreakers, other_worker: CircuitBreakers, clock: FakeClock
) -> None:
    open_circuit(breakers, "a")
    clock.advance(POLICY.reset_after)
    breakers.admit("a", POLICY)  # the trial; its worker dies and never reports
    clock.advance(POLICY.reset_after - 1)
    assert refusal(other_worker, "a", POLICY).retry_after == 1.0
    clock.advance(1)
    other_worker.admit("a", POLICY)
    assert breakers.state("a").opened_at == clock.now
    assert refusal(breakers, "a", POLICY).retry_after == POLICY.reset_after


def test_late_failures_of_calls_admitted_before_it_opened_do_not_extend_it(
    breakers: CircuitBreakers, clock: FakeClock
) -> None:
    open_circuit(breakers, "a")
    opened_at = clock.now
    clock.advance(5)
    breakers.failure("a", POLICY, "late")
    state = breakers.state("a")
    assert (state.state, state.failures, state.opened_at) == ("open", 4, opened_at)
    assert refusal(breakers, "a", POLICY).retry_after == 5.0


def test_one_failure_opens_a_circuit_whose_threshold_is_one(
    breakers: CircuitBreakers, clock: FakeClock
) -> None:
    policy = BreakerPolicy(failures=1, reset_after=2.5)
    breakers.failure("a", policy, "boom")
    state = breakers.state("a")
    assert (state.state, state.failures, state.opened_at) == ("open", 1, clock.now)
    assert refusal(breakers, "a", policy).retry_after == 2.5


def test_circuits_are_per_action(breakers: CircuitBreakers) -> None:
    open_circuit(breakers, "a")
    breakers.admit("b", POLICY)
    breakers.failure("b", POLICY, "boom")
    assert [(s.action, s.state, s.failures) for s in breakers.states()] == [
        ("a", "open", 3),
        ("b", "closed", 1),
    ]


def test_reset_closes_a_circuit_by_hand(breakers: CircuitBreakers) -> None:
    open_circuit(breakers, "a")
    breakers.reset("a")
    state = breakers.state("a")
    assert (state.state, state.failures, state.opened_at) == ("closed", 0, None)
    breakers.admit("a", POLICY)
    breakers.reset("never-failed")
    assert breakers.states() == [state]


# --------------------------------------------------------------------------------------------
# The hot path writes nothing
# --------------------------------------------------------------------------------------------


def test_admit_and_success_on_a_closed_circuit_write_nothing(
    breakers: CircuitBreakers, store: CountingStore, clock: FakeClock
) -> None:
    breakers.failure("a", POLICY, "boom")
    breakers.success("a", POLICY)
    written = breakers.state("a")
    writes = store.writes
    clock.advance(60)
    for _ in range(5):
        breakers.admit("a", POLICY)
        breakers.success("a", POLICY)
    assert store.writes == writes
    assert breakers.state("a") == written


def test_refusals_write_nothing(
    breakers: CircuitBreakers, store: CountingStore, clock: FakeClock
) -> None:
    open_circuit(breakers, "a")
    writes = store.writes
    clock.advance(POLICY.reset_after / 2)
    for _ in range(3):
        refusal(breakers, "a", POLICY)
    assert store.writes == writes


# --------------------------------------------------------------------------------------------
# Concurrency: threads of one worker, and two workers
# --------------------------------------------------------------------------------------------


def test_exactly_one_concurrent_caller_wins_each_trial(
    breakers: CircuitBreakers, other_worker: CircuitBreakers, clock: FakeClock
) -> None:
    open_circuit(breakers, "a")
    for _ in range(3):  # each round's trial is abandoned, and the next round replaces it
        clock.advance(POLICY.reset_after)
        calls = [
            functools.partial(worker.admit, "a", POLICY)
            for worker in (breakers, other_worker)
            for _ in range(4)
        ]
        results = run_together(calls)
        admitted = [r for r in results if r is None]
        refused = [r for r in results if isinstance(r, CircuitOpenError)]
        assert len(admitted) == 1, results
        assert len(refused) == len(calls) - 1, results
        assert {e.retry_after for e in refused} == {POLICY.reset_after}
        state = breakers.state("a")
        assert (state.state, state.opened_at) == ("half_open", clock.now)


def test_concurrent_failures_all_count(
    breakers: CircuitBreakers, other_worker: CircuitBreakers
) -> None:
    policy = BreakerPolicy(failures=100)
    # the first failures of an action race to insert its row
    calls = [
        functools.partial(worker.failure, "fresh", policy, f"error {n}")
        for n, worker in enumerate([breakers, other_worker] * 4)
    ]
    assert run_together(calls) == [None] * len(calls)
    assert breakers.state("fresh").failures == len(calls)


def test_concurrent_failures_open_the_circuit_once(
    breakers: CircuitBreakers, other_worker: CircuitBreakers, clock: FakeClock
) -> None:
    policy = BreakerPolicy(failures=3, reset_after=10.0)
    calls = [
        functools.partial(worker.failure, "a", policy, "boom")
        for worker in [breakers, other_worker] * 3
    ]
    run_together(calls)
    state = breakers.state("a")
    assert (state.state, state.failures, state.opened_at) == ("open", 6, clock.now)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"failures": 0}, "failures must be a whole number of at least 1"),
        ({"failures": -2}, "failures must be a whole number of at least 1"),
        ({"failures": 2.5}, "failures must be a whole number of at least 1"),
        ({"failures": True}, "failures must be a whole number of at least 1"),
        ({"failures": "3"}, "failures must be a whole number of at least 1"),
        ({"reset_after": 0}, "reset_after must be a finite number of seconds greater than 0"),
        ({"reset_after": -1.0}, "reset_after must be a finite number of seconds greater than 0"),
        ({"reset_after": math.nan}, "reset_after must be a finite number"),
        ({"reset_after": math.inf}, "reset_after must be a finite number"),
        ({"reset_after": "30"}, "reset_after must be a finite number"),
        ({"reset_after": False}, "reset_after must be a finite number"),
        ({"when_open": "retry"}, "when_open must be 'fail' or 'delay', not 'retry'"),
        ({"when_open": None}, "when_open must be 'fail' or 'delay', not None"),
    ],
)
def test_bad_policies_are_refused_with_the_field_named(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ActionRegistrationError, match=r"^breaker policy: ") as caught:
        BreakerPolicy(**fields)
    assert message in str(caught.value)


def test_a_policy_has_defaults_and_takes_whole_seconds() -> None:
    assert BreakerPolicy() == BreakerPolicy(failures=5, reset_after=30.0, when_open="fail")
    policy = BreakerPolicy(reset_after=2)
    assert type(policy.reset_after) is float
    assert policy.describe() == {"failures": 5, "reset_after": 2.0, "when_open": "fail"}
    with pytest.raises(TypeError):
        BreakerPolicy(3)  # type: ignore[call-arg]


@pytest.mark.parametrize("action", ["", "x" * 201])
def test_a_bad_action_name_is_refused(breakers: CircuitBreakers, action: str) -> None:
    with pytest.raises(InvalidInputError, match="action name of 1 to 200 characters"):
        breakers.admit(action, POLICY)
    with pytest.raises(InvalidInputError):
        breakers.failure(action, POLICY, "boom")


def test_a_database_without_the_table_is_a_store_error(tmp_path: Path, clock: FakeClock) -> None:
    store = SQLStore(f"sqlite:///{tmp_path}/empty.db")  # never upgraded
    breakers = CircuitBreakers(store, clock=clock)
    with pytest.raises(StoreUnavailableError, match=r"run `ledgerflow db upgrade`") as caught:
        breakers.admit("a", POLICY)
    assert str(caught.value).startswith("circuit breaker of 'a': admitting a call failed: ")
    with pytest.raises(StoreUnavailableError, match="recording a failure"):
        breakers.failure("a", POLICY, "boom")
    with pytest.raises(StoreUnavailableError, match="reading the states"):
        breakers.states()
    store.close()


def test_an_unreachable_database_is_a_store_error(clock: FakeClock) -> None:
    store = SQLStore("postgresql://nobody@127.0.0.1:9/none?connect_timeout=2")
    with pytest.raises(StoreUnavailableError):
        CircuitBreakers(store, clock=clock).admit("a", POLICY)
    store.close()


def test_a_nul_in_an_error_is_stored_shown(breakers: CircuitBreakers) -> None:
    breakers.failure("a", POLICY, "bad\x00byte")
    assert breakers.state("a").last_error == "bad\\x00byte"


def test_the_refusal_is_one_line_and_survives_pickling() -> None:
    error = CircuitOpenError(
        "a", retry_after=-0.5, when_open="delay", last_error="Traceback\n  line 2"
    )
    assert error.retry_after == 0.0
    assert str(error) == (
        "the circuit of action 'a' is open (last error: Traceback); "
        "a call will be tried again in 0.0 s"
    )
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.action, copy.retry_after, copy.when_open, copy.last_error, str(copy)) == (
        error.action,
        error.retry_after,
        error.when_open,
        error.last_error,
        str(error),
    )


# --------------------------------------------------------------------------------------------
# The registry keeps the policy
# --------------------------------------------------------------------------------------------


def run(params: Any, ctx: ActionContext) -> Any:
    return params


def test_the_registry_keeps_the_policy_of_each_action() -> None:
    registry = ActionRegistry()
    policy = BreakerPolicy(failures=2, reset_after=5, when_open="delay")
    registry.register_simple_action("simple", "", [], run, breaker=policy)
    registry.register_database_action("db", "", [], "SERIALIZABLE", run, breaker=policy)
    registry.action("decorated", breaker=BreakerPolicy())(run)
    registry.register_simple_action("plain", "", [], run)
    assert registry.get("simple").breaker is policy
    assert registry.get("db").breaker is policy
    assert registry.get("decorated").breaker == BreakerPolicy()
    assert registry.get("plain").breaker is None
    described = {entry["name"]: entry["breaker"] for entry in registry.describe()}
    assert described == {
        "db": {"failures": 2, "reset_after": 5.0, "when_open": "delay"},
        "decorated": {"failures": 5, "reset_after": 30.0, "when_open": "fail"},
        "plain": None,
        "simple": {"failures": 2, "reset_after": 5.0, "when_open": "delay"},
    }


def test_a_breaker_that_is_not_a_policy_is_refused() -> None:
    with pytest.raises(
        ActionRegistrationError, match=r"action 'a': breaker must be a BreakerPolicy or None"
    ):
        Action(name="a", params=(), fn=run, breaker={"failures": 3})  # type: ignore[arg-type]
    with pytest.raises(ActionRegistrationError, match="breaker must be a BreakerPolicy"):
        ActionRegistry().register_simple_action("a", "", [], run, breaker=3)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# The stored state follows a simple model
# --------------------------------------------------------------------------------------------


@attrs.define
class Model:
    """The circuit as the rules describe it, one caller at a time."""

    state: CircuitState = "closed"
    failures: int = 0
    opened_at: float | None = None
    last_error: str | None = None
    updated_at: float | None = None

    def admit(self, policy: BreakerPolicy, now: float) -> float | None:
        """``None`` if admitted, else the retry_after of the refusal."""
        if self.state == "closed":
            return None
        assert self.opened_at is not None
        if self.opened_at <= now - policy.reset_after:
            self.state, self.opened_at, self.updated_at = "half_open", now, now
            return None
        return max(0.0, self.opened_at + policy.reset_after - now)

    def success(self, now: float) -> None:
        if self.state != "closed" or self.failures != 0:
            self.state, self.failures, self.opened_at, self.updated_at = "closed", 0, None, now

    def failure(self, policy: BreakerPolicy, error: str, now: float) -> None:
        self.failures += 1
        self.last_error, self.updated_at = error, now
        if self.state == "half_open" or (
            self.state == "closed" and self.failures >= policy.failures
        ):
            self.state, self.opened_at = "open", now


policies = st.builds(
    BreakerPolicy,
    failures=st.integers(1, 4),
    reset_after=st.sampled_from([0.5, 1.0, 2.5]),
    when_open=st.sampled_from(["fail", "delay"]),
)
operations = st.lists(
    st.one_of(
        st.just(("success", 0.0)),
        st.just(("failure", 0.0)),
        st.just(("admit", 0.0)),
        st.tuples(st.just("advance"), st.sampled_from([0.25, 0.5, 1.0, 2.5])),
    ),
    max_size=25,
)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(policy=policies, steps=operations)
def test_the_stored_state_follows_the_model(
    store: CountingStore, policy: BreakerPolicy, steps: list[tuple[str, float]]
) -> None:
    clock = FakeClock()
    breakers = CircuitBreakers(store, clock=clock)
    action = f"a-{uuid.uuid4().hex}"  # examples share the database: one action each
    model = Model()
    for index, (operation, seconds) in enumerate(steps):
        if operation == "advance":
            clock.advance(seconds)
        elif operation == "success":
            breakers.success(action, policy)
            model.success(clock.now)
        elif operation == "failure":
            breakers.failure(action, policy, f"error {index}")
            model.failure(policy, f"error {index}", clock.now)
        else:
            expected = model.admit(policy, clock.now)
            if expected is None:
                breakers.admit(action, policy)
            else:
                error = refusal(breakers, action, policy)
                assert (error.retry_after, error.when_open) == (expected, policy.when_open)
        assert breakers.state(action) == BreakerState(
            action=action,
            state=model.state,
            failures=model.failures,
            opened_at=model.opened_at,
            last_error=model.last_error,
            updated_at=model.updated_at,
        )
