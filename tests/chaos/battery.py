"""What every scenario of the battery shares: its size, a fleet of worker processes to start and
kill, a load of events to enqueue (recording what was acknowledged), and the audit that checks
the guarantees at the end and counts every violation, so the report can publish the figures.

Sizes (``LEDGERFLOW_CHAOS``): ``short`` (default; part of ``pytest tests``, a few hundred events),
``medium`` (a few thousand), ``long`` (20,000 events with 4 workers and a 10-minute soak;
``nox -s chaos``). Every wait is a bounded poll of a condition, with a deadline scaled to the
size; nothing asserts on speed.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

import invoice_app
from apps import chaos_app
from ledgerflow.engine import Engine
from ledgerflow.store import ALL_TENANTS

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
TENANTS = ("acme", "globex")
"""The tenants whose executions every scenario runs."""
CANARY = "initech"
"""A tenant with rows of its own that no scenario may touch."""


@dataclass(frozen=True, kw_only=True)
class Size:
    """How big a run is. ``executions`` Chaos executions get ``hits`` events each;
    ``invoices`` InvoiceApproval executions are created, submitted and approved alongside."""

    name: str
    executions: int
    hits: int
    invoices: int
    workers: int
    kills: int
    """Workers killed (SIGKILL) in the kill scenario."""
    soak_seconds: float
    deadline: float
    """The longest any one wait for the workers may take, in seconds."""
    fuzz_examples: int

    @property
    def events(self) -> int:
        """The events the load enqueues: hits, plus two per invoice."""
        return self.executions * self.hits + 2 * self.invoices


SIZES = {
    "short": Size(
        name="short",
        executions=24,
        hits=6,
        invoices=6,
        workers=2,
        kills=3,
        soak_seconds=12,
        deadline=150,
        fuzz_examples=25,
    ),
    "medium": Size(
        name="medium",
        executions=200,
        hits=10,
        invoices=50,
        workers=4,
        kills=12,
        soak_seconds=90,
        deadline=600,
        fuzz_examples=100,
    ),
    "long": Size(
        name="long",
        executions=1000,
        hits=20,
        invoices=200,
        workers=4,
        kills=40,
        soak_seconds=600,
        deadline=1800,
        fuzz_examples=300,
    ),
}


def size() -> Size:
    """The size ``LEDGERFLOW_CHAOS`` asks for (default ``short``)."""
    name = os.environ.get("LEDGERFLOW_CHAOS", "short").strip().lower() or "short"
    if name not in SIZES:
        raise ValueError(f"LEDGERFLOW_CHAOS={name!r}: expected one of {', '.join(SIZES)}")
    return SIZES[name]


def wait_until(check: Callable[[], bool], *, timeout: float, what: str, every: float = 0.2) -> None:
    """Poll ``check`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        time.sleep(every)


# ----------------------------------------------------------------------------------------------
# Worker processes
# ----------------------------------------------------------------------------------------------


class Fleet:
    """Worker processes (``python -m ledgerflow … worker``) of one database and broker, logging
    to one file. :meth:`spawn` starts one, :meth:`kill` sends SIGKILL, :meth:`replace_dead`
    starts a new worker for each that died, :meth:`stop` ends them all (bounded)."""

    def __init__(
        self,
        db_url: str,
        broker_url: str,
        directory: Path,
        *,
        concurrency: int = 2,
        lease_ttl: float = 2.0,
    ) -> None:
        self.db_url = db_url
        self.broker_url = broker_url
        self.directory = directory
        self.fault_dir = directory / "faults"
        self.fault_dir.mkdir(parents=True, exist_ok=True)
        self.concurrency = concurrency
        self.lease_ttl = lease_ttl
        self.log_path = directory / "workers.log"
        self._log = self.log_path.open("a")
        self.processes: list[subprocess.Popen[bytes]] = []
        self.retired: list[subprocess.Popen[bytes]] = []
        self.kills = 0
        """SIGKILLs sent from outside."""

    def spawn(self, *, die_at: str = "") -> subprocess.Popen[bytes]:
        """Start a worker; ``die_at`` (``effect:N`` or ``commit:N``) makes it kill itself there
        (see :mod:`apps.chaos_app`)."""
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                [str(TESTS), str(ROOT / "contrib" / "examples" / "invoice_approval")]
            ),
            "CHAOS_DIE_AT": die_at,
            "CHAOS_FAULT_DIR": str(self.fault_dir),
        }
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ledgerflow",
                "--db",
                self.db_url,
                "--broker",
                self.broker_url,
                "--app",
                "apps.chaos_app",
                "worker",
                "--concurrency",
                str(self.concurrency),
                "--lease-ttl",
                str(self.lease_ttl),
                "--poll-interval",
                "0.2",
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # to a file, never a pipe nobody reads
            stderr=self._log,
        )
        self.processes.append(process)
        return process

    def wait_ready(self, engine: Engine, timeout: float) -> None:
        """Wait until every running worker has sent its first heartbeat (it is connected and
        about to take work)."""

        def ready() -> bool:
            assert all(p.poll() is None for p in self.processes), self.log()
            pids = {p.pid for p in self.processes}
            beating = {r.pid for r in engine.store.worker_rows() if r.stopped_at is None}
            return pids <= beating

        wait_until(ready, timeout=timeout, what="the workers' first heartbeats")

    @property
    def alive(self) -> list[subprocess.Popen[bytes]]:
        """The workers running now."""
        return [p for p in self.processes if p.poll() is None]

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL ``process`` and wait for it."""
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            self.kills += 1
        process.wait(timeout=30)

    def replace_dead(self, *, die_at: Callable[[], str] = lambda: "") -> int:
        """Start a new worker for each one that died; returns how many."""
        dead = [p for p in self.processes if p.poll() is not None]
        for process in dead:
            self.processes.remove(process)
            self.retired.append(process)
            self.spawn(die_at=die_at())
        return len(dead)

    @property
    def self_kills(self) -> int:
        """Workers that killed themselves at a fault point (each left a file)."""
        return len(list(self.fault_dir.iterdir()))

    def stop(self) -> list[int | None]:
        """SIGTERM every worker, wait (bounded) and SIGKILL stragglers; returns the exit codes
        of the workers that were running."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes: list[int | None] = []
        for process in self.processes:
            try:
                codes.append(process.wait(timeout=60))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
                codes.append(None)
        return codes

    def log(self) -> str:
        """The end of the workers' log, for a failure's message."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-6000:]

    def close(self) -> None:
        """Stop every worker and close the log."""
        self.stop()
        self._log.close()


# ----------------------------------------------------------------------------------------------
# The load and what was acknowledged
# ----------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Load:
    """Executions of every scenario and the events clients got an id for (acknowledged)."""

    engine: Engine
    executions: dict[str, str] = field(default_factory=dict)
    """Execution id → tenant."""
    hits: dict[str, str] = field(default_factory=dict)
    """Acknowledged ``Hit`` event id → its execution."""
    invoices: dict[str, tuple[str, str]] = field(default_factory=dict)
    """InvoiceApproval execution id → (tenant, invoice id)."""
    acknowledged: set[str] = field(default_factory=set)
    """Every acknowledged event id."""
    client_errors: Counter[str] = field(default_factory=Counter)
    """Errors clients saw, by type name."""
    prefix: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    """What this load's invoice executions' ids start with."""

    def create(self, count: int) -> list[str]:
        """``count`` Chaos executions, spread over the tenants."""
        created = []
        for n in range(count):
            tenant = TENANTS[n % len(TENANTS)]
            execution_id = self.engine.create_execution("Chaos", tenant=tenant)
            self.executions[execution_id] = tenant
            created.append(execution_id)
        return created

    def hit(self, execution_id: str, n: int, *, key: str | None = None) -> str:
        """Enqueue one ``Hit``; returns its id once acknowledged."""
        tenant = self.executions[execution_id]
        event_id = self.engine.enqueue_event(
            execution_id, "Hit", tenant=tenant, payload={"n": n}, key=key
        )
        self.hits[event_id] = execution_id
        self.acknowledged.add(event_id)
        return event_id

    def hits_in_turn(self, executions: list[str], per_execution: int) -> None:
        """``per_execution`` hits to each execution, interleaved across them."""
        for n, execution_id in itertools.product(range(per_execution), executions):
            self.hit(execution_id, n)

    def invoice(self, number: int) -> str:
        """Create, submit and approve one invoice of ``number``; returns its execution. A
        careful client's call: its execution id and event keys are its own, so calling it
        again after an error (which may have come after a commit) starts no second
        execution of the same invoice and appends nothing twice."""
        tenant = TENANTS[number % len(TENANTS)]
        invoice_id = f"INV-{number}"
        execution_id = f"{self.prefix}-invoice-{number}"
        self.executions[execution_id] = tenant
        self.invoices[execution_id] = (tenant, invoice_id)
        _, created = self.engine.start(
            "InvoiceApproval",
            "CreateInvoice",
            tenant=tenant,
            role="clerk",
            payload={"invoice": {"id": invoice_id, "customer_id": "C-1", "total": 100.0 + number}},
            execution_id=execution_id,
            key=f"{execution_id}:create",
        )
        self.acknowledged.add(created)
        self.acknowledged.add(
            self.engine.enqueue_event(
                execution_id,
                "ApproveInvoice",
                tenant=tenant,
                role="manager",
                payload={"approved_by": "mia"},
                key=f"{execution_id}:approve",
            )
        )
        return execution_id

    def decided(self) -> int:
        """Events decided so far."""
        with self.engine.store.read(tenant=ALL_TENANTS) as conn:
            return int(
                conn.execute(
                    sa.text(
                        "SELECT count(*) FROM lf_events WHERE kind = 'event_received' "
                        "AND status <> 'pending'"
                    )
                ).scalar_one()
            )

    def pending(self) -> int:
        """Acknowledged events not decided yet."""
        with self.engine.store.read(tenant=ALL_TENANTS) as conn:
            return int(
                conn.execute(
                    sa.text(
                        "SELECT count(*) FROM lf_events WHERE kind = 'event_received' "
                        "AND status = 'pending'"
                    )
                ).scalar_one()
            )

    def wait_processed(self, fleet: Fleet | None, timeout: float) -> None:
        """Wait until no event is left undecided."""
        try:
            wait_until(lambda: self.pending() == 0, timeout=timeout, what="every event decided")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}; {self.pending()} pending\n{fleet and fleet.log()}"
            ) from None


def seed_canary(engine: Engine) -> dict[str, Any]:
    """Rows of the canary tenant, which no scenario may touch; returns them (to compare)."""
    with engine.store.write(tenant=ALL_TENANTS) as conn:
        for n in range(3):
            conn.execute(
                chaos_app.effects.insert().values(
                    key=f"canary:{n}", tenant=CANARY, execution_id=f"canary-{n}", n=n, pid=0
                )
            )
        conn.execute(
            invoice_app.invoices.insert().values(
                tenant=CANARY,
                id="CANARY-1",
                customer_id="C-0",
                total=1.0,
                currency="EUR",
                status="approved",
            )
        )
    return canary_rows(engine)


def canary_rows(engine: Engine) -> dict[str, Any]:
    """The canary tenant's rows now."""
    with engine.store.read(tenant=ALL_TENANTS) as conn:
        effects = conn.execute(
            sa.select(chaos_app.effects)
            .where(chaos_app.effects.c.tenant == CANARY)
            .order_by(chaos_app.effects.c.key)
        ).all()
        invoices = conn.execute(
            sa.select(invoice_app.invoices).where(invoice_app.invoices.c.tenant == CANARY)
        ).all()
    return {"effects": [tuple(r) for r in effects], "invoices": [tuple(r) for r in invoices]}


def empty(engine: Engine) -> None:
    """Delete every row of the ledger and of the app's tables (a scenario starts clean)."""
    from ledgerflow.store.schema import metadata

    with engine.store.write(tenant=ALL_TENANTS) as conn:
        names = [t.name for t in metadata.sorted_tables if t.name != "lf_definitions"]
        names += ["chaos_effects", "invoices", "payments"]
        conn.exec_driver_sql(f"TRUNCATE {', '.join(names)}")


# ----------------------------------------------------------------------------------------------
# The audit
# ----------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Tally:
    """What the audit found; every count but ``events`` must be zero."""

    events: int
    lost: int = 0
    """Acknowledged events missing or never decided, and effects missing for decided ones."""
    duplicated: int = 0
    """Effects (rows, or step results in the ledger) beyond one per event and step."""
    order_violations: int = 0
    """Adjacent effects of one execution not in ledger order."""
    replay_mismatches: int = 0
    """Executions whose projection differs from a replay of their ledger."""
    tenant_leaks: int = 0
    """Rows whose tenant is not their execution's, and canary rows changed."""
    unexpected: list[str] = field(default_factory=list)
    """Events decided otherwise than the scenario expects (``id: status outcome detail``)."""

    @property
    def clean(self) -> bool:
        """Whether every guarantee held."""
        return not (
            self.lost
            or self.duplicated
            or self.order_violations
            or self.replay_mismatches
            or self.tenant_leaks
            or self.unexpected
        )


def audit(
    load: Load,
    *,
    canary: Mapping[str, Any] | None = None,
    expect_status: Callable[[str, str], bool] = lambda event, status: status == "processed",
) -> Tally:
    """Check the guarantees over everything ``load`` enqueued; ``expect_status(event name,
    status)`` says which final statuses are right (by default: every event processed)."""
    engine = load.engine
    ids = list(load.executions)
    tally = Tally(events=len(load.acknowledged))
    with engine.store.read(tenant=ALL_TENANTS) as conn:
        received = {
            r.event_id: r
            for r in conn.execute(
                sa.text(
                    "SELECT event_id, execution_id, seq, tenant, name, status, outcome, detail "
                    "FROM lf_events WHERE kind = 'event_received' AND execution_id = ANY(:ids)"
                ),
                {"ids": ids},
            )
        }
        effects = conn.execute(
            sa.select(chaos_app.effects)
            .where(chaos_app.effects.c.execution_id.in_(ids))
            .order_by(chaos_app.effects.c.ord)
        ).all()
        doubled_steps = conn.execute(
            sa.text(
                "SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM lf_events "
                "WHERE kind = 'step_succeeded' AND execution_id = ANY(:ids) "
                "GROUP BY execution_id, body->>'event_seq', body->>'step_id') AS s WHERE n > 1"
            ),
            {"ids": ids},
        ).scalar_one()
        foreign = conn.execute(
            sa.text(
                "SELECT count(*) FROM lf_events e JOIN lf_executions x ON x.id = e.execution_id "
                "WHERE e.tenant <> x.tenant AND x.id = ANY(:ids)"
            ),
            {"ids": ids},
        ).scalar_one()
        invoices = {
            (r.tenant, r.id): r.status for r in conn.execute(sa.select(invoice_app.invoices))
        }
        payments = Counter(
            (r.tenant, r.invoice_id) for r in conn.execute(sa.select(invoice_app.payments))
        )
    # every acknowledged event is in the ledger and decided as expected
    for event_id in load.acknowledged:
        row = received.get(event_id)
        if row is None or row.status == "pending":
            tally.lost += 1
        elif not expect_status(row.name, row.status):
            tally.unexpected.append(
                f"{event_id} {row.name}: {row.status} {row.outcome} {row.detail}"
            )
    # every processed Hit has exactly one effect, of its tenant, in ledger order
    by_event = Counter(r.key.split(":")[1] for r in effects)
    for event_id in load.hits:
        row = received.get(event_id)
        if row is not None and row.status == "processed" and by_event[event_id] == 0:
            tally.lost += 1
    tally.duplicated += sum(n - 1 for n in by_event.values() if n > 1)
    tally.duplicated += sum(1 for r in effects if r.key.split(":")[1] not in load.hits)
    tally.duplicated += int(doubled_steps)
    seqs: dict[str, list[int]] = defaultdict(list)
    for r in effects:
        event = received.get(r.key.split(":")[1])
        if event is not None:
            seqs[r.execution_id].append(event.seq)
        if r.tenant != load.executions.get(r.execution_id):
            tally.tenant_leaks += 1
    tally.order_violations = sum(
        sum(1 for a, b in itertools.pairwise(s) if a >= b) for s in seqs.values()
    )
    tally.tenant_leaks += int(foreign)
    # every approved invoice has its row, marked, and one payment
    for tenant, invoice_id in load.invoices.values():
        if invoices.get((tenant, invoice_id)) != "payment_scheduled":
            tally.lost += 1
        tally.lost += payments[(tenant, invoice_id)] == 0
        tally.duplicated += max(0, payments[(tenant, invoice_id)] - 1)
    # the projection is a cache of the ledger
    for execution_id, tenant in load.executions.items():
        stored = engine.get_execution(execution_id, tenant=tenant)
        replayed = engine.replay(execution_id, tenant=tenant)
        if (stored.state, dict(stored.context), stored.status, stored.seq) != (
            replayed.name,
            dict(replayed.context),
            replayed.status,
            replayed.seq,
        ):
            tally.replay_mismatches += 1
    if canary is not None and canary_rows(engine) != canary:
        tally.tenant_leaks += 1
    return tally


# ----------------------------------------------------------------------------------------------
# Results for the report
# ----------------------------------------------------------------------------------------------


def record(
    scenario: str, tally: Tally, *, faults: int, seconds: float, notes: Iterable[str] = ()
) -> None:
    """Append the scenario's figures to ``LEDGERFLOW_CHAOS_RESULTS`` (a JSON-lines file the
    report reads), if that is set."""
    path = os.environ.get("LEDGERFLOW_CHAOS_RESULTS")
    if not path:
        return
    row = {
        "scenario": scenario,
        "size": size().name,
        **{k: v for k, v in asdict(tally).items() if k != "unexpected"},
        "unexpected": len(tally.unexpected),
        "faults": faults,
        "seconds": round(seconds, 1),
        "notes": list(notes),
    }
    with open(path, "a") as file:
        file.write(json.dumps(row) + "\n")


def check(tally: Tally, fleet: Fleet | None = None) -> None:
    """Fail unless every guarantee held, saying which did not."""
    assert tally.clean, f"{tally}\n{fleet.log() if fleet else ''}"


def fault_plan(rng: random.Random, budget: list[int]) -> Callable[[], str]:
    """A chooser of kill points for replacement workers: while ``budget[0]`` lasts, each new
    worker dies at a random effect or commit (its 1st to 15th)."""

    def choose() -> str:
        if budget[0] <= 0:
            return ""
        budget[0] -= 1
        return f"{rng.choice(['effect', 'commit'])}:{rng.randint(1, 15)}"

    return choose
