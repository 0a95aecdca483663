"""``Engine.migrate``: executions moved to a newer version under their lease, audited in their
ledger, replayed alike from zero and from snapshots; refusals that say why and write nothing."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ledgerflow
from ledgerflow.model import ExecutionMigrated
from ledgerflow.versioning import MigrationOutcome, MigrationRefusal
from versioning.parcel_workflows import (
    OTHER_TENANT,
    PARCEL_V2,
    TENANT,
    Parcels,
    parcel,
    parcels,
    stored,
)

__all__ = ["parcels"]  # the fixture: imported for pytest to find

HOUR = 3600.0


def migrate_one(
    parcels: Parcels, x: str, *, tenant: str = TENANT, **kwargs: Any
) -> MigrationOutcome:
    kwargs.setdefault("requested_by", "ops")
    report = parcels.engine.migrate(
        "Parcel",
        kwargs.pop("source", 1),
        kwargs.pop("target", 2),
        executions=[x],
        tenant=tenant,
        **kwargs,
    )
    (outcome,) = report.outcomes
    return outcome


def test_a_migrated_execution_goes_on_under_the_new_version(parcels: Parcels) -> None:
    engine = parcels.engine
    x = parcels.packed(weight=10)
    outcome = migrate_one(parcels, x)
    assert outcome.migrated
    assert (outcome.state, outcome.status, outcome.refusal) == ("packed", "active", None)
    assert outcome.seq is not None
    history = engine.history(x, tenant=TENANT)
    last = history[-1]
    assert last.kind == "execution_migrated"
    assert last.record == ExecutionMigrated(
        seq=outcome.seq, from_version=1, to_version=2, state="packed", requested_by="ops"
    )
    found = engine.get_execution(x, tenant=TENANT)
    assert (found.version, found.state, found.seq, found.decided_seq) == (2, "packed", last.seq, 2)
    parcels.check_replay(x)
    # from here on v2 decides: couriers may ship, parcels come back, holding is gone
    with pytest.raises(ledgerflow.InvalidEventError, match="Parcel v2 has no event 'Hold'"):
        parcels.send(x, "Hold")
    parcels.send(x, "Ship", role="courier")
    parcels.send(x, "Return")
    parcels.send(x, "Deliver")
    parcels.run()
    done = engine.get_execution(x, tenant=TENANT)
    assert (done.version, done.state, done.status) == (2, "delivered", "completed")
    assert [e.outcome for e in engine.history(x, tenant=TENANT) if e.kind == "event_received"] == [
        "applied",
        "applied",
        "applied",
        "applied",
    ]
    assert len(engine.store.snapshot_states(x, TENANT)) >= 2  # one on each side of the move
    parcels.check_replay(x)


def test_the_new_versions_rules_apply_to_the_next_event(parcels: Parcels) -> None:
    x = parcels.packed(weight=25)
    assert migrate_one(parcels, x).migrated
    parcels.send(x, "Ship", role="clerk")  # v1 ships 25 kg; v2 only up to 20
    parcels.run()
    found = parcels.engine.get_execution(x, tenant=TENANT)
    assert (found.version, found.state) == (2, "packed")
    ship = parcels.engine.history(x, tenant=TENANT)[-1]
    assert (ship.kind, ship.record.reason.value) == ("event_rejected", "condition_false")  # type: ignore[union-attr]
    parcels.check_replay(x)


def test_a_snapshot_is_taken_at_the_migration(parcels: Parcels) -> None:
    x = parcels.packed()
    outcome = migrate_one(parcels, x)
    snapshot = parcels.engine.store.snapshot_states(x, TENANT)[-1]
    assert (snapshot.seq, snapshot.version, snapshot.name) == (outcome.seq, 2, "packed")


def test_the_new_versions_timers_count_from_when_the_state_was_entered(parcels: Parcels) -> None:
    engine, clock = parcels.engine, parcels.clock
    entered = clock.now
    x = parcels.packed()
    assert engine.timers(x, tenant=TENANT) == []  # v1 does not time packed parcels
    clock.now += HOUR
    outcome = migrate_one(parcels, x)
    (timer,) = engine.timers(x, tenant=TENANT)
    assert (timer.event, timer.state, timer.due_at) == ("Expire", "armed", entered + 2 * HOUR)
    assert timer.armed_seq == 3  # the transition into packed
    assert outcome.seq is not None
    assert outcome.seq > timer.armed_seq
    clock.now = entered + 2 * HOUR - 1
    parcels.run()
    assert engine.get_execution(x, tenant=TENANT).state == "packed"
    clock.now = entered + 2 * HOUR
    parcels.run()
    assert engine.get_execution(x, tenant=TENANT).state == "lost"
    parcels.check_replay(x)


def test_a_timer_already_overdue_under_the_new_version_fires_at_once(parcels: Parcels) -> None:
    x = parcels.packed()
    parcels.clock.now += 3 * HOUR
    migrate_one(parcels, x)
    (timer,) = parcels.engine.timers(x, tenant=TENANT)
    assert timer.due_at == parcels.clock.now
    parcels.run()
    assert parcels.engine.get_execution(x, tenant=TENANT).state == "lost"


def test_the_new_versions_at_timers_are_armed_from_the_context(parcels: Parcels) -> None:
    engine, clock = parcels.engine, parcels.clock
    deadline = (
        '  - {name: deadline, from: packed, to: lost, on: Deadline, at: "context.deadline"}\n'
    )
    engine.register(
        ledgerflow.loads(PARCEL_V2.replace("version: 2", "version: 4") + deadline, "yaml")
    )
    entered = clock.now
    x = engine.create_execution("Parcel", 1, tenant=TENANT, context={"deadline": entered + 600})
    parcels.send(x, "Pack", payload={"weight": 1})
    parcels.run()
    clock.now += 60
    assert migrate_one(parcels, x, target=4).migrated
    timers = {t.event: t for t in engine.timers(x, tenant=TENANT)}
    assert sorted(timers) == ["Deadline", "Expire"]
    assert timers["Deadline"].due_at == entered + 600
    assert timers["Expire"].due_at == entered + 2 * HOUR
    clock.now = entered + 600
    parcels.run()
    found = engine.get_execution(x, tenant=TENANT)
    assert (found.state, found.version) == ("lost", 4)
    assert engine.history(x, tenant=TENANT)[-1].record.transition == "deadline"  # type: ignore[union-attr]
    parcels.check_replay(x)


def test_timers_the_versions_agree_on_are_left_alone(parcels: Parcels) -> None:
    engine = parcels.engine
    engine.register(parcel(3))
    x = parcels.start(2)
    parcels.send(x, "Pack", payload={"weight": 1})
    parcels.run()
    armed = engine.timers(x, tenant=TENANT)
    assert [t.event for t in armed] == ["Expire"]
    parcels.clock.now += HOUR
    assert migrate_one(parcels, x, source=2, target=3).migrated
    assert engine.timers(x, tenant=TENANT) == armed


REFUSALS = {
    "held": (MigrationRefusal.STATE_MISSING, "state 'held' does not exist in Parcel v2"),
    "delivered": (MigrationRefusal.COMPLETED, "is completed in 'delivered': nothing is left"),
    "failed": (MigrationRefusal.FAILED, "is failed in 'packed': retry it first"),
    "pending": (MigrationRefusal.EVENTS_PENDING, "has 1 event(s) still to be processed"),
    "leased": (MigrationRefusal.BUSY, "is being processed by a worker: try again"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_a_refused_migration_says_why_and_writes_nothing(parcels: Parcels, case: str) -> None:
    x = parcels.packed()
    if case == "held":
        parcels.send(x, "Hold")
    elif case == "delivered":
        parcels.send(x, "Ship", role="clerk")
        parcels.send(x, "Deliver")
    elif case == "failed":
        parcels.send(x, "Inspect", payload={"notifier": "carrier-pigeon"})
    parcels.run()
    if case == "pending":
        parcels.send(x, "Ship", role="clerk")
    elif case == "leased":
        assert parcels.engine.store.take_lease(x, "a-worker", 30.0) is not None
    before = stored(parcels)
    outcome = migrate_one(parcels, x)
    refusal, detail = REFUSALS[case]
    assert not outcome.migrated
    assert outcome.refusal is refusal
    assert detail in outcome.detail
    assert outcome.seq is None
    assert stored(parcels) == before
    assert parcels.engine.get_execution(x, tenant=TENANT).version == 1


def test_a_state_the_new_version_makes_terminal_is_refused(parcels: Parcels) -> None:
    parcels.engine.register(parcel(3))
    x = parcels.start(2)
    parcels.send(x, "Pack", payload={"weight": 1})
    parcels.send(x, "Ship", role="courier")
    parcels.run()
    before = stored(parcels)
    outcome = migrate_one(parcels, x, source=2, target=3)
    assert outcome.refusal is MigrationRefusal.STATE_TERMINAL
    assert outcome.detail == (
        "state 'shipped' is terminal in Parcel v3: the execution would end without a transition"
    )
    assert stored(parcels) == before


def test_another_tenants_execution_is_not_found(parcels: Parcels) -> None:
    theirs = parcels.packed(tenant=OTHER_TENANT)
    before = stored(parcels)
    for x in (theirs, "no-such-execution"):
        outcome = migrate_one(parcels, x)
        assert (outcome.refusal, outcome.detail) == (
            MigrationRefusal.NOT_FOUND,
            f"execution {x} not found",
        )
        assert (outcome.state, outcome.status) == (None, None)
    assert stored(parcels) == before
    assert parcels.engine.get_execution(theirs, tenant=OTHER_TENANT).version == 1


def test_an_execution_migrated_already_is_not_on_the_old_version(parcels: Parcels) -> None:
    x = parcels.packed()
    assert migrate_one(parcels, x).migrated
    before = stored(parcels)
    again = migrate_one(parcels, x)
    assert (again.refusal, again.detail) == (
        MigrationRefusal.NOT_ON_VERSION,
        f"execution {x} is on Parcel v2, not Parcel v1",
    )
    assert stored(parcels) == before


BAD_INPUT: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"from_version": 2, "to_version": 1}, ledgerflow.InvalidInputError, "only move to a newer"),
    ({"from_version": 1, "to_version": 1}, ledgerflow.InvalidInputError, "only move to a newer"),
    ({"to_version": 9}, ledgerflow.WorkflowNotFoundError, "'Parcel' has no version 9"),
    ({"workflow": "Nope"}, ledgerflow.WorkflowNotFoundError, "'Nope' has no version 1"),
    ({"from_version": True}, ledgerflow.InvalidInputError, "from_version must be a positive"),
    ({"tenant": None}, ledgerflow.InvalidInputError, "executions named by id need their tenant"),
    ({"tenant": ""}, ledgerflow.InvalidInputError, "a tenant is required"),
    ({"executions": []}, ledgerflow.InvalidInputError, "no execution named"),
    ({"executions": "x"}, ledgerflow.InvalidInputError, "'all' or a list of execution ids"),
    ({"executions": [""]}, ledgerflow.InvalidInputError, "'' is not an execution id"),
    ({"requested_by": 7}, ledgerflow.InvalidInputError, "requested_by must be a string"),
]


@pytest.mark.parametrize(("change", "error", "message"), BAD_INPUT)
def test_bad_input_is_a_typed_error_and_writes_nothing(
    parcels: Parcels, change: dict[str, Any], error: type[Exception], message: str
) -> None:
    x = parcels.packed()
    before = stored(parcels)
    call: dict[str, Any] = {
        "workflow": "Parcel",
        "from_version": 1,
        "to_version": 2,
        "executions": [x],
        "tenant": TENANT,
        **change,
    }
    with pytest.raises(error, match=message):
        parcels.engine.migrate(
            call.pop("workflow"), call.pop("from_version"), call.pop("to_version"), **call
        )
    assert stored(parcels) == before


def test_all_chooses_the_active_and_failed_executions_on_the_old_version(parcels: Parcels) -> None:
    active = parcels.packed()
    parcels.clock.now += 1  # chosen oldest first
    failed = parcels.packed()
    parcels.send(failed, "Inspect", payload={"notifier": "carrier-pigeon"})
    parcels.clock.now += 1
    completed = parcels.packed()
    parcels.send(completed, "Lose")
    parcels.run()
    parcels.clock.now += 1
    theirs = parcels.packed(tenant=OTHER_TENANT)
    parcels.start(2)
    report = parcels.engine.migrate("Parcel", 1, 2, executions="all", tenant=TENANT)
    assert [(o.execution_id, o.migrated, o.refusal) for o in report.outcomes] == [
        (active, True, None),
        (failed, False, MigrationRefusal.FAILED),
    ]
    assert (len(report.migrated), len(report.refused)) == (1, 1)
    everyone = parcels.engine.migrate("Parcel", 1, 2, executions="all")
    assert [(o.execution_id, o.tenant, o.migrated) for o in everyone.outcomes] == [
        (failed, TENANT, False),
        (theirs, OTHER_TENANT, True),
    ]
    assert parcels.engine.get_execution(theirs, tenant=OTHER_TENANT).version == 2
    assert parcels.engine.get_execution(completed, tenant=TENANT).version == 1


def test_a_migration_racing_a_worker_never_interleaves_with_it(parcels: Parcels) -> None:
    x = parcels.packed()
    sent = 30
    outcomes: list[MigrationOutcome] = []

    def work() -> None:
        for _ in range(sent):
            parcels.send(x, "Inspect", payload={"notifier": "log"})
            parcels.run()

    def move() -> None:
        while not any(o.migrated for o in outcomes):
            outcomes.append(migrate_one(parcels, x))

    threads = [threading.Thread(target=work), threading.Thread(target=move)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    parcels.run()
    assert all(
        o.refusal in (MigrationRefusal.EVENTS_PENDING, MigrationRefusal.BUSY) for o in outcomes[:-1]
    )
    assert outcomes[-1].migrated
    history = parcels.engine.history(x, tenant=TENANT)
    assert [e.kind for e in history].count("execution_migrated") == 1
    inspections = [e for e in history if e.kind == "event_received"][1:]
    assert len(inspections) == sent
    assert all(e.outcome == "applied" for e in inspections)
    parcels.check_replay(x)


EVENTS = st.sampled_from(
    [
        ("Pack", {"weight": 10}, None),
        ("Pack", {"weight": 25}, None),
        ("Ship", {}, "clerk"),
        ("Ship", {}, "courier"),
        ("Hold", {}, None),
        ("Release", {}, None),
        ("Return", {}, None),
        ("Inspect", {"notifier": "log"}, None),
        ("Deliver", {}, None),
        ("Lose", {}, None),
    ]
)


@settings(max_examples=12, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(before=st.lists(EVENTS, max_size=4), after=st.lists(EVENTS, max_size=4))
def test_replay_from_zero_equals_the_projection_whatever_came_before_and_after(
    parcels: Parcels,
    before: list[tuple[str, dict[str, Any], str | None]],
    after: list[tuple[str, dict[str, Any], str | None]],
) -> None:
    x = parcels.start(1)

    def send(events: list[tuple[str, dict[str, Any], str | None]]) -> None:
        for name, payload, role in events:
            # an event unknown to the version pinned now is refused: nothing appended
            with contextlib.suppress(ledgerflow.InvalidEventError):
                parcels.send(x, name, payload=payload, role=role)
        parcels.run()

    send(before)
    state = parcels.engine.get_execution(x, tenant=TENANT)
    outcome = migrate_one(parcels, x)
    assert outcome.migrated == (state.status == "active" and state.state != "held")
    send(after)
    found = parcels.engine.get_execution(x, tenant=TENANT)
    assert found.version == (2 if outcome.migrated else 1)
    migrations = [r for r in parcels.records(x) if isinstance(r, ExecutionMigrated)]
    assert [r.seq for r in migrations] == ([outcome.seq] if outcome.migrated else [])
    parcels.check_replay(x)
