"""check_workflow: a planted bug is caught with a short ledger; a correct workflow passes 200
examples; faults find an action that is not idempotent; invariants fail both ways."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import hypothesis
import pytest
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test

from ledgerflow.registry import ActionContext, ActionRegistry
from ledgerflow.testing import Harness, Observation, check_workflow, workflow_machine
from testing.kit_workflows import actions, expense, expense_without_limit, within_limit


def settings(examples: int, *, shrink: bool = True) -> hypothesis.settings:
    """Reproducible settings: no example database, the same examples on every run; without
    ``shrink``, the first failure is reported as found (for tests that only ask whether)."""
    return hypothesis.settings(
        max_examples=examples,
        stateful_step_count=5,
        deadline=None,
        database=None,
        derandomize=True,
        report_multiple_bugs=False,
        suppress_health_check=[HealthCheck.too_slow],
        phases=[Phase.generate, Phase.shrink] if shrink else [Phase.generate],
    )


def sends(error: BaseException) -> list[str]:
    """The events of the shrunk failing sequence hypothesis reports (each rule but the start
    sends one)."""
    return events_in("\n".join(getattr(error, "__notes__", [])))


def events_in(notes: str) -> list[str]:
    skipped = ("state.start(", "state.keeps_its_promises(", "state.teardown(", "state = ")
    return [
        line
        for line in notes.splitlines()
        if line.startswith("state") and not line.startswith(skipped)
    ]


def test_a_planted_bug_is_caught_with_a_short_ledger() -> None:
    started = time.perf_counter()
    with pytest.raises(AssertionError, match="invariant within_limit does not hold") as caught:
        check_workflow(
            expense_without_limit(),
            actions=actions(),
            invariants=[within_limit],
            settings=settings(200),
        )
    elapsed = time.perf_counter() - started
    shown = sends(caught.value)
    print(f"planted bug caught in {elapsed:.1f}s; the counterexample sends {len(shown)} events")
    print("\n".join(shown))
    # the two events that show it: an expense above the limit, then its approval
    assert len(shown) == 2, shown
    assert shown[0].startswith("state.send(event=Submit(")
    assert "role='employee'" in shown[0]
    amount = float(re.search(r"'amount': ([\d.e+]+)", shown[0]).group(1))  # type: ignore[union-attr]
    assert amount > 100
    assert shown[1].startswith("state.send(event=Approve(")
    assert "role='manager'" in shown[1]
    notes = "\n".join(caught.value.__notes__)
    assert "approve: submitted -> approved" in notes  # the ledger is part of the report


def test_a_correct_workflow_passes_200_examples() -> None:
    started = time.perf_counter()
    check_workflow(expense(), actions=actions(), invariants=[within_limit], settings=settings(200))
    print(f"200 examples of a correct workflow in {time.perf_counter() - started:.1f}s")


counted: list[tuple[str, str]] = []
counted_lock = threading.Lock()


def charge_every_time(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """A simple action that charges on every call: not idempotent."""
    with counted_lock:
        counted.append((ctx.execution_id, ctx.idempotency_key))
    return dict(params)


def charge_once_per_key(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """The same action passing its key on, as the outside system would use it."""
    with counted_lock:
        if (ctx.execution_id, ctx.idempotency_key) not in counted:
            counted.append((ctx.execution_id, ctx.idempotency_key))
    return dict(params)


def charges(harness: Harness) -> int:
    """The effects outside the store, of this harness's executions."""
    with counted_lock:
        return sum(1 for execution_id, _ in counted if execution_id in harness.executions)


def registry_of(fn: Any) -> ActionRegistry:
    registry = ActionRegistry()
    registry.register_simple_action("note", "Charge.", [{"name": "amount", "type": "number"}], fn)
    return registry


def test_a_crash_shows_an_action_that_is_not_idempotent() -> None:
    with pytest.raises(AssertionError, match="differs from the same events without the fault"):
        check_workflow(
            expense(),
            actions=registry_of(charge_every_time),
            effects=charges,
            settings=settings(100, shrink=False),
        )


def test_an_idempotent_action_survives_every_fault() -> None:
    check_workflow(
        expense(),
        actions=registry_of(charge_once_per_key),
        effects=charges,
        settings=settings(30),
    )


def test_an_invariant_fails_by_returning_false_or_by_asserting() -> None:
    def never_rejected(observed: Observation) -> bool:
        return observed.state.name != "rejected"

    def never_approved(observed: Observation) -> None:
        assert observed.state.name != "approved", "approved!"

    for invariant, message in [
        (never_rejected, "invariant never_rejected does not hold"),
        (never_approved, "invariant never_approved does not hold: approved!"),
    ]:
        with pytest.raises(AssertionError, match=message):
            check_workflow(
                expense(),
                actions=actions(),
                invariants=[invariant],
                faults=False,
                settings=settings(100, shrink=False),
            )


def test_the_initial_context_can_be_drawn() -> None:
    seen: set[int] = set()

    def limit_seen(observed: Observation) -> None:
        seen.add(int(observed.context["limit"]))

    check_workflow(
        expense(),
        actions=actions(),
        invariants=[limit_seen],
        faults=False,
        context=st.fixed_dictionaries({"limit": st.integers(1, 3)}),
        settings=settings(15),
    )
    assert seen <= {1, 2, 3}
    assert seen


def test_the_machine_runs_as_a_test_case_of_its_own() -> None:
    machine = workflow_machine(expense(), actions=actions(), invariants=[within_limit])
    assert machine.__name__ == "ExpenseMachine"
    case = machine.TestCase
    case.settings = settings(5)
    case("runTest").runTest()


def test_examples_are_not_thrown_away_and_reach_the_end_states() -> None:
    """Every state's events come from one rule: hypothesis's swarm testing cannot switch off
    all of a state's events for an example (which throws the example away, its work done),
    and examples still go deep: most reach a terminal state, both terminal states are met."""
    machine = workflow_machine(expense(), actions=actions(), invariants=[within_limit])
    stories: list[list[str]] = []

    class Counted(machine):  # type: ignore[misc, valid-type]
        def teardown(self) -> None:
            stories.append(list(self.story))
            super().teardown()

    run_state_machine_as_test(Counted, settings=settings(100, shrink=False))
    # the start and four events (hypothesis also ends some examples early itself, when their
    # draws grow large, and cuts others short while it explores)
    complete = [story for story in stories if len(story) == 5]
    assert len(complete) >= 80
    print(f"{len(complete)} of {len(stories)} examples ran every step")
    assert len(complete) >= 0.8 * len(stories), (len(complete), len(stories))
    ends = [story[-1].rsplit("-> ", 1)[1] for story in complete]
    finished = [end for end in ends if end.startswith(("approved", "rejected"))]
    assert len(finished) >= 0.5 * len(complete), ends
    assert {end.split()[0] for end in finished} == {"approved", "rejected"}
