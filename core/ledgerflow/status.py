"""Where work stands, read from the store: the figures ``ledgerflow status`` shows and the
gauges a worker's ``/metrics`` exports.

Everything here is derived from the ledger's own rows (the database is the truth, whatever the
transport): the queue is the events not yet decided, its lag the age of the oldest of them,
throughput the events decided in the last minute by their ``processed_at``, workers alive or
dead by their heartbeats. Each reading is one read transaction across every tenant.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import attrs
import sqlalchemy as sa

from ledgerflow.store.schema import dead_letters, events, executions, leases, timers, workers
from ledgerflow.store.sql import ALL_TENANTS, SQLStore

__all__ = [
    "Gauges",
    "Status",
    "StuckEvent",
    "WorkerStatus",
    "read_gauges",
    "read_status",
    "worker_state",
]


@attrs.frozen(kw_only=True)
class Gauges:
    """The store's figures a scrape reads: ``queue_depth`` events not yet decided, the age in
    seconds of the oldest (``None`` with an empty queue), live ``leases``, armed timers already
    ``timers_due``, unsettled ``dead_letters``, and ``workers`` by state (``alive``, ``dead``,
    ``stopped``)."""

    queue_depth: int
    oldest_age: float | None
    leases: int
    timers_due: int
    dead_letters: int
    workers: Mapping[str, int]


@attrs.frozen(kw_only=True)
class StuckEvent:
    """The oldest event not yet decided: whose, which, how old, and who holds its execution
    (``leased_by`` is ``None`` when nobody does: it waits for a worker)."""

    execution_id: str
    tenant: str
    event_id: str
    event: str | None
    seq: int
    age: float
    leased_by: str | None


@attrs.frozen(kw_only=True)
class WorkerStatus:
    """A worker as its last heartbeat described it, with the state that heartbeat implies."""

    id: str
    state: str
    host: str
    pid: int
    version: str
    broker: str
    concurrency: int
    started_at: float
    last_beat: float
    seconds_since_beat: float
    in_flight: int
    executions: int
    events: int
    errors: int


@attrs.frozen(kw_only=True)
class Status:
    """One screen of ``ledgerflow status``: the :class:`Gauges`, ``decided_last_minute`` by
    status (``processed``, ``rejected``, ``failed``) and ``enqueued_last_minute`` (whose sums
    over 60 are the rates), ``executions`` by status, the ``oldest`` undecided event, and the
    ``workers``, most recent heartbeat first. ``now`` is when it was read (store clock)."""

    now: float
    gauges: Gauges
    window: float
    enqueued_last_minute: int
    decided_last_minute: Mapping[str, int]
    executions: Mapping[str, int]
    oldest: StuckEvent | None
    workers: tuple[WorkerStatus, ...]

    @property
    def throughput(self) -> float:
        """Events decided per second over the window."""
        return sum(self.decided_last_minute.values()) / self.window

    def to_json(self) -> dict[str, Any]:
        """The JSON form ``ledgerflow status --json`` prints."""
        g = self.gauges
        return {
            "now": self.now,
            "queue": {
                "depth": g.queue_depth,
                "lag_seconds": _round(g.oldest_age),
                "oldest": attrs.asdict(self.oldest) if self.oldest else None,
            },
            "throughput": {
                "window_seconds": self.window,
                "enqueued": self.enqueued_last_minute,
                "decided": dict(self.decided_last_minute),
                "decided_per_second": round(self.throughput, 3),
            },
            "executions": dict(self.executions),
            "workers": {
                "alive": g.workers.get("alive", 0),
                "dead": g.workers.get("dead", 0),
                "stopped": g.workers.get("stopped", 0),
                "list": [attrs.asdict(w) for w in self.workers],
            },
            "leases": g.leases,
            "timers_due": g.timers_due,
            "dead_letters": g.dead_letters,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


@contextlib.contextmanager
def _read(store: SQLStore) -> Iterator[sa.Connection]:
    """A read transaction that sees every tenant's rows: these figures cross tenants by
    nature (on PostgreSQL, row-level security is told so for this transaction only)."""
    with store.read(tenant=ALL_TENANTS) as conn:
        yield conn


def worker_state(stopped_at: float | None, last_beat: float, now: float, dead_after: float) -> str:
    """``stopped`` for a worker that said goodbye, ``dead`` for one silent more than
    ``dead_after`` seconds, else ``alive``."""
    if stopped_at is not None:
        return "stopped"
    return "dead" if now - last_beat > dead_after else "alive"


def _gauges(conn: sa.Connection, now: float, dead_after: float) -> Gauges:
    pending = events.c.status == "pending"
    depth, oldest = conn.execute(
        sa.select(sa.func.count(), sa.func.min(events.c.created_at)).where(pending)
    ).one()
    live = conn.execute(
        sa.select(sa.func.count()).select_from(leases).where(leases.c.expires_at > now)
    ).scalar_one()
    due = conn.execute(
        sa.select(sa.func.count())
        .select_from(timers)
        .where(timers.c.state == "armed", timers.c.due_at <= now)
    ).scalar_one()
    letters = conn.execute(
        sa.select(sa.func.count())
        .select_from(dead_letters)
        .where(dead_letters.c.retried_at.is_(None), dead_letters.c.discarded_at.is_(None))
    ).scalar_one()
    by_state = {"alive": 0, "dead": 0, "stopped": 0}
    for row in conn.execute(sa.select(workers.c.stopped_at, workers.c.last_beat)):
        by_state[worker_state(row.stopped_at, row.last_beat, now, dead_after)] += 1
    return Gauges(
        queue_depth=int(depth),
        oldest_age=None if oldest is None else max(0.0, now - float(oldest)),
        leases=int(live),
        timers_due=int(due),
        dead_letters=int(letters),
        workers=by_state,
    )


def read_gauges(store: SQLStore, *, dead_after: float = 30.0) -> Gauges:
    """The store's :class:`Gauges` now (by the store's clock); a worker counts as dead after
    ``dead_after`` seconds without a heartbeat."""
    now = store.clock()
    with _read(store) as conn:
        return _gauges(conn, now, dead_after)


def read_status(store: SQLStore, *, dead_after: float = 30.0, window: float = 60.0) -> Status:
    """Everything ``ledgerflow status`` shows, read in one transaction: a worker counts as
    dead after ``dead_after`` seconds without a heartbeat; throughput counts the events of
    the last ``window`` seconds.

    Raises :class:`ValueError` unless both are positive.
    """
    if not dead_after > 0 or not window > 0:
        raise ValueError("dead_after and window must be positive numbers of seconds")
    now = store.clock()
    since = now - window
    with _read(store) as conn:
        gauges = _gauges(conn, now, dead_after)
        enqueued = conn.execute(
            sa.select(sa.func.count()).where(
                events.c.kind == "event_received", events.c.created_at >= since
            )
        ).scalar_one()
        decided = {
            row.status: int(row.n)
            for row in conn.execute(
                sa.select(events.c.status, sa.func.count().label("n"))
                .where(events.c.processed_at >= since, events.c.status != "pending")
                .group_by(events.c.status)
            )
        }
        by_status = {
            row.status: int(row.n)
            for row in conn.execute(
                sa.select(executions.c.status, sa.func.count().label("n")).group_by(
                    executions.c.status
                )
            )
        }
        oldest_row = conn.execute(
            sa.select(
                events.c.execution_id,
                events.c.tenant,
                events.c.event_id,
                events.c.name,
                events.c.seq,
                events.c.created_at,
                leases.c.owner,
            )
            .select_from(
                events.outerjoin(
                    leases,
                    sa.and_(
                        leases.c.execution_id == events.c.execution_id,
                        leases.c.expires_at > now,
                    ),
                )
            )
            .where(events.c.status == "pending")
            .order_by(events.c.created_at, events.c.execution_id, events.c.seq)
            .limit(1)
        ).first()
        worker_rows = conn.execute(sa.select(workers).order_by(workers.c.last_beat.desc())).all()
    oldest = (
        None
        if oldest_row is None
        else StuckEvent(
            execution_id=oldest_row.execution_id,
            tenant=oldest_row.tenant,
            event_id=oldest_row.event_id,
            event=oldest_row.name,
            seq=oldest_row.seq,
            age=round(max(0.0, now - oldest_row.created_at), 3),
            leased_by=oldest_row.owner,
        )
    )
    return Status(
        now=now,
        gauges=gauges,
        window=window,
        enqueued_last_minute=int(enqueued),
        decided_last_minute=decided,
        executions={s: by_status.get(s, 0) for s in ("active", "completed", "failed")} | by_status,
        oldest=oldest,
        workers=tuple(
            WorkerStatus(
                id=w.id,
                state=worker_state(w.stopped_at, w.last_beat, now, dead_after),
                host=w.host,
                pid=w.pid,
                version=w.version,
                broker=w.broker,
                concurrency=w.concurrency,
                started_at=w.started_at,
                last_beat=w.last_beat,
                seconds_since_beat=round(now - w.last_beat, 1),
                in_flight=w.in_flight,
                executions=w.executions,
                events=w.events,
                errors=w.errors,
            )
            for w in worker_rows
        ),
    )
