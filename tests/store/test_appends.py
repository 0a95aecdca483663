"""Appends of any size: a few records (with their wake-ups) go in one statement on PostgreSQL,
thousands by executemany (a statement takes at most 65,535 parameters); either way every
record is in the ledger and every event_received has its one wake-up."""

from __future__ import annotations

from typing import Any

import attrs
import psycopg
import pytest
import sqlalchemy as sa

from ledgerflow.engine import Engine
from ledgerflow.model import (
    EventReceived,
    ExecutionStarted,
    Record,
    State,
    Status,
    TransitionApplied,
)
from ledgerflow.store import ALL_TENANTS
from ledgerflow.store.sql import NOTIFY_CHANNEL
from support.executions import ensure_execution

TENANT = "acme"


def ledger(engine: Engine, execution_id: str) -> tuple[list[tuple[int, str]], list[str]]:
    """The execution's ``(seq, kind)`` records and the event ids its wake-ups name."""
    with engine.store.read(tenant=ALL_TENANTS) as conn:
        records = conn.execute(
            sa.text("SELECT seq, kind FROM lf_events WHERE execution_id = :x ORDER BY seq"),
            {"x": execution_id},
        ).all()
        wakeups = conn.execute(
            sa.text("SELECT event_id FROM lf_outbox WHERE execution_id = :x ORDER BY id"),
            {"x": execution_id},
        ).scalars()
        return [(r.seq, r.kind) for r in records], list(wakeups)


@pytest.mark.parametrize("count", [1, 2, 16, 17, 5_000])
def test_appends_of_any_size_keep_every_record_and_wakeup(engine: Engine, count: int) -> None:
    x = f"x-{count}"
    ensure_execution(engine.store, x, TENANT, "InvoiceApproval")
    records: list[Record] = [
        EventReceived(seq=2 + n, name="CreateInvoice", payload={"n": n}, role="clerk")
        for n in range(count)
    ]
    with engine.store.write(tenant=TENANT) as conn:
        ids = engine.store.insert_records(conn, x, TENANT, records, published=True)
    found, wakeups = ledger(engine, x)
    assert found == [(2 + n, "event_received") for n in range(count)]
    assert wakeups == ids
    assert len(set(ids)) == count


@pytest.mark.parametrize("then", [0, 1, 40])
def test_a_new_execution_and_its_first_records(engine: Engine, then: int) -> None:
    x = f"x-new-{then}"
    started = ExecutionStarted(seq=1, workflow="InvoiceApproval", version=1, context={})
    state = State(
        workflow="InvoiceApproval",
        version=1,
        name="draft",
        context={},
        status=Status.ACTIVE,
        seq=1,
        decided_seq=1,
    )
    following = [
        EventReceived(seq=2 + n, name="CreateInvoice", payload={"n": n}, role="clerk")
        for n in range(then)
    ]
    with engine.store.write(tenant=TENANT) as conn:
        ids = engine.store.insert_execution(
            conn, x, TENANT, state, started, then=following, client_key=None
        )
    found, wakeups = ledger(engine, x)
    assert found == [(1, "execution_started")] + [(2 + n, "event_received") for n in range(then)]
    assert wakeups == ids
    assert engine.get_execution(x, tenant=TENANT).state == "draft"


@pytest.mark.parametrize("count", [1, 3, 16, 17])
def test_a_workers_records_without_wakeups_and_a_taken_seq(engine: Engine, count: int) -> None:
    """What a worker's commit appends (records that are not events: no wake-ups), in one
    statement or by executemany; a seq already taken is the IntegrityError the engine's
    commit retries on, and nothing of that append is kept."""
    x = f"x-worker-{count}"
    ensure_execution(engine.store, x, TENANT, "InvoiceApproval")
    records: list[Record] = [
        TransitionApplied(
            seq=2 + n, event_seq=1, transition="t", source="draft", target="draft", context={}
        )
        for n in range(count)
    ]
    with engine.store.write(tenant=TENANT) as conn:
        ids = engine.store.insert_records(conn, x, TENANT, records)
    found, wakeups = ledger(engine, x)
    assert found == [(2 + n, "transition_applied") for n in range(count)]
    assert wakeups == []
    assert len(set(ids)) == count
    clashing = [attrs.evolve(r, seq=r.seq + count - 1) for r in records]
    with pytest.raises(sa.exc.IntegrityError), engine.store.write(tenant=TENANT) as conn:
        engine.store.insert_records(conn, x, TENANT, clashing)
    assert ledger(engine, x) == (found, [])


def _notifications(listener: psycopg.Connection[Any]) -> list[str]:
    """The payloads of the wake-up notifications ``listener`` has received so far."""
    listener.execute("SELECT 1")  # reads what the server sent meanwhile
    return [n.payload for n in listener.notifies(timeout=0.2) if n.channel == NOTIFY_CHANNEL]


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("count", [1, 3, 17])
def test_appended_events_notify_the_database_transport_once_at_commit(
    engine: Engine, count: int
) -> None:
    """Events appended for the database transport (not published by a broker) send one
    NOTIFY of the execution's id, when their transaction commits: inside the appending
    statement when it is one, after it otherwise; none for a rolled-back append, none for
    records that are not events, none for a broker's events."""
    x = f"x-notify-{count}"
    ensure_execution(engine.store, x, TENANT, "InvoiceApproval")
    url = engine.store.engine.url.set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as listener:
        listener.execute(f"LISTEN {NOTIFY_CHANNEL}")

        def events(first: int) -> list[Record]:
            return [
                EventReceived(seq=first + n, name="CreateInvoice", payload={"n": n}, role="clerk")
                for n in range(count)
            ]

        def append_then_fail() -> None:
            with engine.store.write(tenant=TENANT) as conn:
                engine.store.insert_records(conn, x, TENANT, events(2))
                raise RuntimeError("rolled back")

        with pytest.raises(RuntimeError):
            append_then_fail()
        assert _notifications(listener) == []
        with engine.store.write(tenant=TENANT) as conn:
            engine.store.insert_records(conn, x, TENANT, events(2))
            assert _notifications(listener) == []  # not before the commit
        assert _notifications(listener) == [x]
        with engine.store.write(tenant=TENANT) as conn:
            engine.store.insert_records(conn, x, TENANT, events(2 + count), published=True)
            engine.store.insert_records(
                conn,
                x,
                TENANT,
                [
                    TransitionApplied(
                        seq=2 + 2 * count,
                        event_seq=2,
                        transition="t",
                        source="draft",
                        target="draft",
                        context={},
                    )
                ],
            )
        assert _notifications(listener) == []
