"""Scenario 6: tenant walls under load. Generated cross-tenant calls on every tenant-taking
entry point of the engine (the list kept by ``tests/tenants/test_tenant_walls.py``, reused
here) against executions in every state; and a hostile database action, run by worker
processes as a role row-level security applies to, that forgets every tenant filter and
tries to read, change, delete and forge other tenants' rows."""

from __future__ import annotations

import dataclasses
import importlib
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import invoice_app
from chaos.battery import CANARY, Fleet, Load, audit, record, seed_canary, size
from ledgerflow import definitions
from ledgerflow.engine import Engine
from ledgerflow.errors import EventNotFoundError, ExecutionNotFoundError
from ledgerflow.model import StepSucceeded
from ledgerflow.worker import Worker

RUN = size()

# The wall tests' own list of cross-tenant calls, one per tenant-taking entry point (a test there
# fails when a new one is missing). Imported by name: mypy already knows that file as a
# top-level test module, and two names for one file would be an error.
_walls = importlib.import_module("tenants.test_tenant_walls")
CROSS_TENANT_CALLS: dict[str, Callable[[Engine, str, str], Any]] = _walls.CROSS_TENANT_CALLS
ACME: str = _walls.ACME
GLOBEX: str = _walls.GLOBEX


def test_generated_cross_tenant_calls_find_nothing(chaos: Engine, fleet: Fleet) -> None:
    started = time.monotonic()
    # the calls' migrate case moves InvoiceApproval v1 executions to a v2
    text = invoice_app.DEFINITION.read_text().replace("\nversion: 1\n", "\nversion: 2\n", 1)
    chaos.register(definitions.loads(text, "yaml"))
    load = Load(engine=chaos)
    targets: list[tuple[str, str]] = []
    for number in range(4):  # ACME's, in several states: created, submitted, processed
        x = chaos.create_execution("InvoiceApproval", tenant=ACME)
        if number:
            event_id = chaos.enqueue_event(
                x,
                "CreateInvoice",
                tenant=ACME,
                role="clerk",
                payload={"invoice": {"id": f"A-{number}", "customer_id": "C", "total": 9}},
            )
            targets.append((x, event_id))
            load.executions[x] = ACME
    fleet.spawn()
    load.wait_processed(fleet, RUN.deadline)
    attempts = 0

    @settings(
        max_examples=RUN.fuzz_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(call=st.sampled_from(sorted(CROSS_TENANT_CALLS)), target=st.sampled_from(targets))
    def attempt(call: str, target: tuple[str, str]) -> None:
        nonlocal attempts
        attempts += 1
        before = chaos.store.row_counts()
        with pytest.raises((ExecutionNotFoundError, EventNotFoundError), match="not found"):
            CROSS_TENANT_CALLS[call](chaos, *target)
        after = chaos.store.row_counts()
        assert {t: n for t, n in after.items() if t != "lf_workers"} == {
            t: n for t, n in before.items() if t != "lf_workers"
        }

    attempt()
    leaks = sum(
        1
        for x, _ in targets
        for entry in chaos.history(x, tenant=ACME)
        if getattr(entry.record, "role", None) not in (None, "clerk")
    )
    tally = audit(load)
    tally.tenant_leaks += leaks
    record(
        "tenant walls: cross-tenant calls",
        tally,
        faults=attempts,
        seconds=time.monotonic() - started,
        notes=[f"{len(CROSS_TENANT_CALLS)} entry points", f"{attempts} generated attempts"],
    )
    assert tally.clean, tally


def test_a_hostile_database_action_stays_inside_its_tenant(chaos: Engine, fleet: Fleet) -> None:
    started = time.monotonic()
    canary = seed_canary(chaos)
    load = Load(engine=chaos)
    executions = load.create(4)  # acme's and globex's, with effects
    load.hits_in_turn(executions, 2)
    snoops = [chaos.create_execution("ChaosSnoop", tenant=GLOBEX) for _ in range(3)]
    for x in snoops:
        load.executions[x] = GLOBEX
        load.acknowledged.add(chaos.enqueue_event(x, "Snoop", tenant=GLOBEX))
    for _ in range(RUN.workers):
        fleet.spawn()
    load.wait_processed(fleet, RUN.deadline)
    results: list[Any] = [
        e.record.result
        for x in snoops
        for e in chaos.history(x, tenant=GLOBEX)
        if isinstance(e.record, StepSucceeded)
    ]
    assert len(results) == len(snoops)
    leaks = 0
    for result in results:
        leaks += result["tenants_seen"] != [GLOBEX]
        leaks += result["updated"] != 0
        leaks += result["forged"]
    # claiming every tenant ("*"), or another by name, must show nothing more: the action runs
    # as a confined role, and its seal is its own tenant's
    lifted = sum(bool(set(result["tenants_seen_as_all"]) - {GLOBEX}) for result in results)
    tally = audit(load, canary=canary)
    tally.tenant_leaks += leaks
    record(
        "tenant walls: hostile database action",
        dataclasses.replace(tally, tenant_leaks=tally.tenant_leaks + lifted),
        faults=len(snoops),
        seconds=time.monotonic() - started,
        notes=[
            f"{len(snoops)} hostile actions",
            f"canary tenant {CANARY} untouched",
            f"{lifted} of them lifted the wall by setting ledgerflow.tenant to '*' or to "
            "another tenant's name",
        ],
    )
    assert tally.clean, (tally, [sorted(r.items()) for r in results])


def test_a_database_action_cannot_lift_the_wall_itself(chaos: Engine) -> None:
    seed_canary(chaos)
    x = chaos.create_execution("ChaosSnoop", tenant=GLOBEX)
    chaos.enqueue_event(x, "Snoop", tenant=GLOBEX)
    Worker(chaos, poll_interval=0.05).run(until_idle=True)
    (result,) = [
        e.record.result
        for e in chaos.history(x, tenant=GLOBEX)
        if isinstance(e.record, StepSucceeded)
    ]
    assert isinstance(result, dict)
    assert result["tenants_seen_as_all"] == []  # globex has no effect rows; initech has
