"""Scenario 4: sixteen client threads enqueue to the same ten executions at once while workers
process them, and retry some of their appends with the same client key. Every append gets its
own seq (optimistic concurrency), every retry its first event's id, every effect happens once
and in ledger order, and each thread's events keep the order it sent them in."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections import defaultdict

from chaos.battery import Fleet, Load, audit, check, record, seed_canary, size
from ledgerflow.engine import Engine
from ledgerflow.store import ALL_TENANTS

THREADS = 16
EXECUTIONS = 10


def test_sixteen_clients_on_ten_executions(chaos: Engine, fleet: Fleet) -> None:
    run = size()
    per_thread = max(10, run.executions * run.hits // THREADS)
    started = time.monotonic()
    canary = seed_canary(chaos)
    load = Load(engine=chaos)
    executions = load.create(EXECUTIONS)
    for _ in range(run.workers):
        fleet.spawn()
    lock = threading.Lock()
    sent: dict[int, list[tuple[str, str]]] = defaultdict(list)
    """Per thread: (execution, event id), in the order the appends returned."""
    retries = 0
    failure: list[BaseException] = []
    go = threading.Barrier(THREADS)

    def client(number: int) -> None:
        nonlocal retries
        rng = random.Random(number)
        try:
            go.wait(timeout=60)
            for i in range(per_thread):
                x = rng.choice(executions)
                key = f"client-{number}-{i}"
                event_id = chaos.enqueue_event(
                    x, "Hit", tenant=load.executions[x], payload={"n": i}, key=key
                )
                if rng.random() < 0.1:  # the client did not hear the answer: it sends again
                    again = chaos.enqueue_event(
                        x, "Hit", tenant=load.executions[x], payload={"n": i}, key=key
                    )
                    assert again == event_id, "a retry with the same key appended again"
                    with lock:
                        retries += 1
                with lock:
                    load.hits[event_id] = x
                    load.acknowledged.add(event_id)
                    sent[number].append((x, event_id))
        except BaseException as exc:  # reported by the test's thread
            failure.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=run.deadline)
    assert not failure, failure
    assert len(load.acknowledged) == THREADS * per_thread
    load.wait_processed(fleet, run.deadline)
    tally = audit(load, canary=canary)
    # each thread's appends to one execution are in the ledger in the order they returned
    with chaos.store.read(tenant=ALL_TENANTS) as conn:
        seq: dict[str, int] = dict(
            conn.exec_driver_sql(
                "SELECT event_id, seq FROM lf_events WHERE kind = 'event_received'"
            ).all()
        )
    for appends in sent.values():
        for _, mine in itertools.groupby(sorted(appends, key=lambda a: a[0]), key=lambda a: a[0]):
            seqs = [seq[event_id] for _, event_id in mine]
            tally.order_violations += sum(1 for a, b in itertools.pairwise(seqs) if a >= b)
    record(
        "16 clients on the same 10 executions",
        tally,
        faults=retries,
        seconds=time.monotonic() - started,
        notes=[f"{THREADS} threads", f"{retries} retried appends (same key)"],
    )
    check(tally, fleet)
