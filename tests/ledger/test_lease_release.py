"""A worker gives an execution's lease up in the commit that finds nothing left to decide
(``Engine.process(release_when_idle=True)``), and no wake-up is left behind by it: an event
that commits while the lease is held is processed by the holder or by the worker it wakes."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from apps import counting_app
from ledgerflow.engine import Engine, Lease
from ledgerflow.errors import ExecutionNotFoundError
from ledgerflow.store import ALL_TENANTS
from ledgerflow.worker import Worker

TENANT = "acme"


def hit(engine: Engine, execution_id: str, n: int) -> str:
    return engine.enqueue_event(execution_id, "Hit", tenant=TENANT, payload={"n": n})


def undecided(engine: Engine, execution_id: str) -> list[int]:
    return [
        entry.seq
        for entry in engine.history(execution_id, tenant=TENANT)
        if entry.kind == "event_received" and entry.status == "pending"
    ]


def hits_of(engine: Engine, execution_id: str) -> int:
    with engine.store.read(tenant=ALL_TENANTS) as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(counting_app.hits)
                .where(counting_app.hits.c.execution_id == execution_id)
            ).scalar_one()
        )


def test_the_last_commit_gives_the_lease_up(counting: Engine) -> None:
    x = counting.create_execution("Counting", tenant=TENANT)
    hit(counting, x, 1)
    token = counting.store.take_lease(x, "w1", 30)
    assert token is not None
    done = counting.process(
        x, tenant=TENANT, lease=Lease(owner="w1", token=token, ttl=30), release_when_idle=True
    )
    assert done == 1
    assert undecided(counting, x) == []
    # free at once: another worker takes it without waiting for it to expire
    assert counting.store.take_lease(x, "w2", 30) is not None


def test_without_release_when_idle_the_lease_stays_held(counting: Engine) -> None:
    x = counting.create_execution("Counting", tenant=TENANT)
    hit(counting, x, 1)
    token = counting.store.take_lease(x, "w1", 30)
    assert token is not None
    assert counting.process(x, tenant=TENANT, lease=Lease(owner="w1", token=token, ttl=30)) == 1
    assert counting.store.take_lease(x, "w2", 30) is None
    assert counting.store.renew_lease(x, "w1", token, 30)


def test_an_event_that_arrives_meanwhile_is_processed_before_the_lease_goes(
    counting: Engine,
) -> None:
    x = counting.create_execution("Counting", tenant=TENANT)
    hit(counting, x, 1)
    token = counting.store.take_lease(x, "w1", 30)
    assert token is not None
    arrived: list[str] = []

    def client_appends_once() -> bool:
        # asked before each event: the first time, a client appends while w1 works
        if not arrived:
            arrived.append(hit(counting, x, 2))
        return False

    done = process_as_w1(counting, x, token, client_appends_once)
    assert done == 2
    assert undecided(counting, x) == []
    assert hits_of(counting, x) == 2
    assert counting.store.take_lease(x, "w2", 30) is not None


def test_a_stop_between_events_keeps_the_lease(counting: Engine) -> None:
    """``should_stop`` cuts the processing short before the commit that would find nothing
    left: the lease is still held, for the caller to give up."""
    x = counting.create_execution("Counting", tenant=TENANT)
    hit(counting, x, 1)
    hit(counting, x, 2)
    token = counting.store.take_lease(x, "w1", 30)
    assert token is not None
    asked: list[bool] = []

    def stop_after_one() -> bool:
        asked.append(True)
        return len(asked) > 1

    done = process_as_w1(counting, x, token, stop_after_one)
    assert done == 1
    assert undecided(counting, x) != []
    assert counting.store.take_lease(x, "w2", 30) is None


def strike_before_the_fence(engine: Engine, strike: Callable[[], None]) -> list[bool]:
    """Run ``strike`` (in another thread, to its end) just before the next lease renewal that
    opens a worker's commit: the moment a worker that looked for events before renewing its
    lease would miss what ``strike`` appends. Returns a list that gets ``True`` once struck."""
    struck: list[bool] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            strike()
        except BaseException as exc:  # raised again by the caller
            errors.append(exc)

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # the renewal, alone or leading the statement that also locks the execution
        renewal = statement.startswith(
            ("UPDATE lf_leases SET expires_at", "WITH fenced AS \n(UPDATE lf_leases SET expires_at")
        )
        if struck or not renewal:
            return
        struck.append(True)
        thread = threading.Thread(target=run)
        thread.start()
        thread.join(30)
        assert not thread.is_alive(), "the strike hung"
        if errors:
            raise errors[0]

    sa.event.listen(engine.store.engine, "before_cursor_execute", before)
    return struck


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("pending", [0, 1], ids=["nothing-pending", "one-pending"])
def test_an_event_committed_as_the_last_commit_begins_is_not_left_behind(
    counting: Engine, pending: int
) -> None:
    """A client's event commits, and the worker handed its wake-up fails to take the lease
    (held), just as the holder's last commit begins, when it had found nothing more to do
    (with ``pending`` events of its own to decide first, or none). The holder must see that
    event in that very commit and decide it before it gives the lease up: the woken worker
    dropped its wake-up."""
    x = counting.create_execution("Counting", tenant=TENANT)
    for n in range(pending):
        hit(counting, x, n)
    token = counting.store.take_lease(x, "w1", 30)
    assert token is not None
    woken: list[int | None] = []

    def client_and_woken_worker() -> None:
        hit(counting, x, 100)
        woken.append(counting.store.take_lease(x, "w2", 30))

    struck = strike_before_the_fence(counting, client_and_woken_worker)
    done = counting.process(
        x, tenant=TENANT, lease=Lease(owner="w1", token=token, ttl=30), release_when_idle=True
    )
    assert struck
    assert woken == [None]  # the woken worker found the lease held, and dropped its wake-up
    assert done == pending + 1
    assert undecided(counting, x) == []
    assert hits_of(counting, x) == pending + 1
    assert counting.store.take_lease(x, "w2", 30) is not None


def process_as_w1(
    engine: Engine, execution_id: str, token: int, should_stop: Callable[[], bool]
) -> int:
    """``w1`` processes the execution under its lease ``token``, giving it up when idle."""
    return engine.process(
        execution_id,
        tenant=TENANT,
        lease=Lease(owner="w1", token=token, ttl=30),
        should_stop=should_stop,
        release_when_idle=True,
    )


def lease_row(engine: Engine, execution_id: str) -> tuple[str, int, float] | None:
    with engine.store.read(tenant=ALL_TENANTS) as conn:
        row = conn.execute(
            sa.text("SELECT owner, token, expires_at FROM lf_leases WHERE execution_id = :x"),
            {"x": execution_id},
        ).first()
    return None if row is None else (row.owner, int(row.token), float(row.expires_at))


def test_take_and_process_takes_the_lease_as_it_reads_and_gives_it_up(counting: Engine) -> None:
    x = counting.create_execution("Counting", tenant=TENANT)
    hit(counting, x, 1)
    hit(counting, x, 2)
    seen: list[tuple[Lease, int]] = []

    def taken(lease: Lease) -> None:
        # held before any event is decided
        seen.append((lease, hits_of(counting, x)))
        row = lease_row(counting, x)
        assert row is not None
        assert row[:2] == (lease.owner, lease.token)
        assert row[2] > 0

    done = counting.take_and_process(x, tenant=TENANT, owner="w1", ttl=30, taken=taken)
    assert done == 2
    [(lease, hits_before)] = seen
    assert (lease.owner, lease.ttl, hits_before) == ("w1", 30, 0)
    assert undecided(counting, x) == []
    assert hits_of(counting, x) == 2
    assert counting.store.take_lease(x, "w2", 30) == lease.token + 1  # given up


def test_take_and_process_writes_nothing_when_the_lease_is_held(counting: Engine) -> None:
    x = counting.create_execution("Counting", tenant=TENANT)
    hit(counting, x, 1)
    token = counting.store.take_lease(x, "w1", 30)
    before = lease_row(counting, x)
    called: list[Lease] = []
    taken = counting.take_and_process(x, tenant=TENANT, owner="w2", ttl=30, taken=called.append)
    assert taken is None
    assert called == []
    assert before is not None
    assert before[1] == token
    assert lease_row(counting, x) == before
    assert undecided(counting, x) != []


def test_take_and_process_leaves_no_lease_for_an_execution_that_is_not_there(
    counting: Engine,
) -> None:
    x = counting.create_execution("Counting", tenant=TENANT)
    with pytest.raises(ExecutionNotFoundError):
        counting.take_and_process(x, tenant="another", owner="w1", ttl=30)
    with pytest.raises(ExecutionNotFoundError):
        counting.take_and_process("x-nobody", tenant=TENANT, owner="w1", ttl=30)
    assert lease_row(counting, x) is None
    assert lease_row(counting, "x-nobody") is None


def test_take_and_process_spends_one_transaction_less(counting: Engine) -> None:
    commits: list[int] = []
    sa.event.listen(counting.store.engine, "commit", lambda conn: commits.append(1))

    def transactions(run: Callable[[str], object]) -> int:
        x = counting.create_execution("Counting", tenant=TENANT)
        hit(counting, x, 1)
        commits.clear()
        run(x)
        assert undecided(counting, x) == []
        return len(commits)

    def separately(x: str) -> None:
        token = counting.store.take_lease(x, "w1", 30)
        assert token is not None
        lease = Lease(owner="w1", token=token, ttl=30)
        counting.process(x, tenant=TENANT, lease=lease, release_when_idle=True)

    together = transactions(
        lambda x: counting.take_and_process(x, tenant=TENANT, owner="w1", ttl=30)
    )
    assert together == transactions(separately) - 1


def test_a_thread_that_finds_the_lease_held_leaves_the_holders_renewal_alone(
    counting: Engine,
) -> None:
    """Two threads of one worker handed wake-ups of one execution: the one that finds the lease
    held (by its sibling) must not drop the sibling's lease from the renewer's list."""
    x = counting.create_execution("Counting", tenant=TENANT)
    hit(counting, x, 1)
    worker = Worker(counting, concurrency=2)
    token = counting.store.take_lease(x, worker.id, 30)
    assert token is not None
    worker._held[x] = token  # the sibling thread, at work on x
    assert worker._run_leased(x, TENANT, None)  # held: acknowledged, nothing done here
    assert worker._held == {x: token}
    assert undecided(counting, x) != []


def test_a_failure_before_the_lease_is_held_parks_the_execution(
    counting: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The transaction that takes the lease with the execution's read fails (it rolls back,
    lease and all): the worker still holds the execution back for its pause, as it does after
    a failure under the lease, instead of every wake-up retrying it at once."""
    x = counting.create_execution("Counting", tenant=TENANT)
    hit(counting, x, 1)
    worker = Worker(counting, concurrency=1)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the ledger could not be read")

    monkeypatch.setattr(counting.store, "records", broken)
    assert worker._run_leased(x, TENANT, None) is False  # not acknowledged
    monkeypatch.undo()
    assert worker._failures == {x: 1}
    assert counting.store.take_lease(x, "w2", 30) is None  # parked for the pause
    row = lease_row(counting, x)
    assert row is not None
    assert row[0] == worker.id
    assert worker._held == {}
