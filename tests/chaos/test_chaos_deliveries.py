"""Scenario 3: the broker and the clock misbehave. Extra wake-ups are published straight to the
streams while workers process (duplicates of live events, batches in reverse order, stale ones
for events long decided): each finds nothing left to do. And the clock jumps back and forth
around the InvoiceApproval example's 48-hour escalation: the timer fires once, never early,
never again."""

from __future__ import annotations

import random
import threading
import time

from ledgerflow_redis.transport import RedisTransport

from apps import chaos_app
from chaos.battery import TENANTS, Fleet, Load, audit, check, record, seed_canary, size, wait_until
from ledgerflow.engine import Engine
from ledgerflow.model import EventReceived
from ledgerflow.transports import Wakeup
from ledgerflow.worker import Worker


def test_duplicate_and_out_of_order_wakeups_change_nothing(
    chaos: Engine, fleet: Fleet, broker_url: str
) -> None:
    run = size()
    rng = random.Random(11)
    started = time.monotonic()
    canary = seed_canary(chaos)
    load = Load(engine=chaos)
    executions = load.create(run.executions)
    for _ in range(run.workers):
        fleet.spawn()
    injected = 0
    done = threading.Event()
    failure: list[BaseException] = []
    transport = RedisTransport(broker_url)

    def meddle() -> None:
        """Publish extra wake-ups for what clients enqueued: each event's three more times,
        every batch reversed, and events decided long ago again."""
        nonlocal injected
        try:
            while not done.is_set() and injected < 4 * run.events:
                # a copy taken at once: the clients add to it meanwhile
                known = list(load.hits.copy().items())
                if not known:
                    time.sleep(0.05)
                    continue
                batch = [
                    Wakeup(execution_id=x, tenant=load.executions[x], event_id=e)
                    for e, x in rng.sample(known, min(len(known), 20))
                ]
                extra = [*batch, *reversed(batch), *batch[::-1][:5], *batch[:5]]
                transport.publish(extra)
                injected += len(extra)
                time.sleep(0.1)
        except BaseException as exc:  # reported by the test's thread
            failure.append(exc)

    meddler = threading.Thread(target=meddle, name="chaos-meddler")
    meddler.start()
    try:
        load.hits_in_turn(executions, run.hits)
        for number in range(run.invoices):
            load.invoice(number)
        load.wait_processed(fleet, run.deadline)
        time.sleep(1.0)  # the stale ones too: wake-ups for events decided already
    finally:
        done.set()
        meddler.join(timeout=30)
        transport.close()
    assert not failure, failure
    assert injected > 0
    load.wait_processed(fleet, run.deadline)
    tally = audit(load, canary=canary)
    record(
        "duplicate and out-of-order wake-ups",
        tally,
        faults=injected,
        seconds=time.monotonic() - started,
        notes=[f"{run.workers} workers", f"{injected} extra wake-ups"],
    )
    check(tally, fleet)


class JumpingClock:
    """The time of day plus an offset that the test moves, forward and back."""

    def __init__(self) -> None:
        self.offset = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return time.time() + self.offset

    def jump(self, seconds: float) -> None:
        """Move the time by ``seconds`` (negative: back)."""
        with self._lock:
            self.offset += seconds


HOUR = 3600.0


def test_clock_jumps_fire_each_timer_once_and_never_early(chaos_db: str, broker_url: str) -> None:
    run = size()
    started = time.monotonic()
    clock = JumpingClock()
    engine = Engine(chaos_db, broker=broker_url, clock=clock)
    chaos_app.setup(engine)
    canary = seed_canary(engine)
    load = Load(engine=engine)
    workers = [
        Worker(engine, concurrency=2, lease_ttl=2, poll_interval=0.05, broker=broker_url)
        for _ in range(2)
    ]
    threads = [threading.Thread(target=w.run, name="chaos-worker") for w in workers]
    for thread in threads:
        thread.start()
    jumps = 0
    count = max(4, run.invoices)

    def escalations() -> dict[str, int]:
        """How many escalation events each execution's ledger holds."""
        return {
            x: sum(
                1
                for h in engine.history(x, tenant=t)
                if isinstance(h.record, EventReceived) and h.record.name == "EscalationDue"
            )
            for x, t in load.executions.items()
        }

    try:
        for number in range(count):
            tenant = TENANTS[number % len(TENANTS)]
            x = engine.create_execution("InvoiceApproval", tenant=tenant)
            load.executions[x] = tenant
            load.invoices[x] = (tenant, f"INV-{number}")
            load.acknowledged.add(
                engine.enqueue_event(
                    x,
                    "CreateInvoice",
                    tenant=tenant,
                    role="clerk",
                    payload={"invoice": {"id": f"INV-{number}", "customer_id": "C", "total": 5}},
                )
            )
        load.wait_processed(None, run.deadline)

        def states() -> set[str]:
            return {engine.get_execution(x, tenant=t).state for x, t in load.executions.items()}

        # back two hours, then 47 forward: 45 hours on, nothing is due yet
        for offset in (-2 * HOUR, 47 * HOUR):
            clock.jump(offset)
            jumps += 1
            time.sleep(0.5)  # ten timer looks of each worker
            assert set(escalations().values()) == {0}, "a timer fired early"
            assert states() == {"pending_approval"}
        # four more: 49 hours on, every escalation is due and fires, once
        clock.jump(4 * HOUR)
        jumps += 1
        wait_until(
            lambda: states() == {"escalated"}, timeout=run.deadline, what="every invoice escalated"
        )
        # back three hours and forward again: fired timers stay fired
        for offset in (-3 * HOUR, 3 * HOUR + 60):
            clock.jump(offset)
            jumps += 1
            time.sleep(0.5)
        assert set(escalations().values()) == {1}, escalations()
        for x, t in load.executions.items():
            load.acknowledged.add(
                engine.enqueue_event(
                    x, "ApproveInvoice", tenant=t, role="director", payload={"approved_by": "dora"}
                )
            )
        load.wait_processed(None, run.deadline)
    finally:
        for worker in workers:
            worker.stop()
        for thread in threads:
            thread.join(timeout=60)
    assert set(escalations().values()) == {1}, escalations()
    tally = audit(load, canary=canary)
    engine.close()
    record(
        "clock jumps around timers",
        tally,
        faults=jumps,
        seconds=time.monotonic() - started,
        notes=[f"{count} escalation timers", "jumps of -2 h, +47 h, +4 h, -3 h, +3 h"],
    )
    check(tally)
