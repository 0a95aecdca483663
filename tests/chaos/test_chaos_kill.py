"""Scenario 1: workers killed with SIGKILL at random moments, and at the two moments that
matter most (after an action's effect is written but before its transaction commits; after the
commit but before the broker message is acknowledged), while several workers process events.
Nothing acknowledged is lost, no effect happens twice, every execution keeps its order."""

from __future__ import annotations

import os
import random
import threading
import time

from chaos.battery import Fleet, Load, audit, check, fault_plan, record, seed_canary, size
from ledgerflow.engine import Engine


def test_random_sigkills_lose_and_double_nothing(chaos: Engine, fleet: Fleet) -> None:
    run = size()
    seed = int(os.environ.get("LEDGERFLOW_CHAOS_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    started = time.monotonic()
    canary = seed_canary(chaos)
    load = Load(engine=chaos)
    executions = load.create(run.executions)
    # half the kills are self-inflicted at a fault point, half come from outside at random
    self_kills = [run.kills // 2 + run.kills % 2]
    choose = fault_plan(rng, self_kills)
    for _ in range(run.workers):
        fleet.spawn(die_at=choose())

    failure: list[BaseException] = []

    def clients() -> None:
        try:
            load.hits_in_turn(executions, run.hits)
            for number in range(run.invoices):
                load.invoice(number)
        except BaseException as exc:  # reported by the test's thread
            failure.append(exc)

    enqueuer = threading.Thread(target=clients, name="chaos-clients")
    enqueuer.start()
    external = run.kills // 2
    deadline = time.monotonic() + run.deadline
    next_kill = time.monotonic() + 1.0
    while enqueuer.is_alive() or load.pending():
        assert time.monotonic() < deadline, f"{load.pending()} pending\n{fleet.log()}"
        if external and time.monotonic() >= next_kill and fleet.alive:
            fleet.kill(rng.choice(fleet.alive))
            external -= 1
            next_kill = time.monotonic() + rng.uniform(0.5, 3.0)
        fleet.replace_dead(die_at=choose)
        time.sleep(0.1)
    enqueuer.join(timeout=60)
    assert not failure, failure
    # a worker told to die at its N-th effect may still be alive with the kill unspent: fine
    faults = fleet.kills + fleet.self_kills
    assert faults >= 1, "no worker was killed: the scenario tested nothing"
    tally = audit(load, canary=canary)
    points = sorted(p.name.split("-")[1] for p in fleet.fault_dir.iterdir())
    record(
        "SIGKILL of workers",
        tally,
        faults=faults,
        seconds=time.monotonic() - started,
        notes=[
            f"{run.workers} workers",
            f"{fleet.kills} at random moments",
            f"{points.count('effect')} between effect and commit",
            f"{points.count('commit')} between commit and ack",
            f"seed {seed}",
        ],
    )
    check(tally, fleet)
