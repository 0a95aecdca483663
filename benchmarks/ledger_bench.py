"""Measure the ledger: enqueue latency, end-to-end throughput, and replay cost.

What is measured, on SQLite (a file in a temporary directory, WAL, ``synchronous=FULL``) and on
PostgreSQL (a fresh database ``ledgerflow_bench_<random>`` created on the server and dropped at
the end):

1. **Enqueue latency**: the wall time of single :meth:`Engine.enqueue_event` calls (p50, p99,
   mean, in ms), 10 events for each of 200 executions of the InvoiceApproval example, sent
   round-robin across the executions (a ``CreateInvoice``, eight ``RejectInvoice`` by a clerk,
   an ``ApproveInvoice``).
2. **End to end**: the same 10 events for each of 100 executions are enqueued first; then
   ``python -m ledgerflow --db URL worker --until-idle --concurrency 2 --poll-interval 0.05``
   subprocesses (1 on SQLite, 2 on PostgreSQL) are started and timed until the last one exits.
   Every event must end ``processed`` or ``rejected`` as the workflow says (2 processed and 8
   rejected per execution, none pending) and every execution's projection must equal its
   replayed ledger. The same workers are then run again on the finished database: that idle
   run is the start-up cost of a worker process, shown separately.
3. **Replay cost** for ledgers of 10, 1,000 and 100,000 records (or one more, where the
   example allows no ledger of exactly that length): ``ledgerflow.fold`` of the
   ledger from zero (in memory); :meth:`Engine.replay` (load, decode and fold the whole ledger
   from the store); and :meth:`Engine.process` deciding one new event of an execution whose
   ledger already holds that many records (median of 10 rounds after a warm-up, each round
   appending two records). ``process`` starts from the stored projection, so it should stay
   roughly flat while the two replays grow with the ledger. The ledgers (an invoice created,
   escalated, then refused over and over: clerks may not reject) are built with
   ``ledgerflow.simulate`` (``decide`` and ``apply``) and written in bulk through the store's
   own functions (``insert_records``, ``save_projection`` inside one
   ``SQLStore.write()``, the events' outcomes by one batched UPDATE of the columns
   ``set_event_outcome`` sets), not one enqueue at a time.

Each figure is one run's measurement; ratios compare the columns (PostgreSQL/SQLite, largest
ledger/smallest). Nothing is asserted about times. The exit status is 1 when a correctness check
failed (an event left pending, a worker error, a projection that differs from its replay).

Reproduce, from the repository root, with PostgreSQL reachable (trust auth) at the ``--pg`` URL::

    . .venv/bin/activate
    python benchmarks/ledger_bench.py            # full run: about a minute on 2 cores
    python benchmarks/ledger_bench.py --quick    # every N about 10x smaller: seconds
    python benchmarks/ledger_bench.py --pg postgresql://postgres@127.0.0.1:5432/postgres \\
        --json results.json

``--pg`` names any database on the server; the benchmark connects to it only to create and
drop its own databases. The SQLite files live under ``$TMPDIR`` (default ``/tmp``), whose
filesystem decides the cost of each commit's fsync. Every temporary file, database and worker
process is removed on exit, also after an error or SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
import sqlalchemy as sa

import ledgerflow
from ledgerflow import Definition, EventReceived, Record, State
from ledgerflow.engine import Engine, Lease
from ledgerflow.model import EventRejected, TransitionApplied
from ledgerflow.store.schema import events, outbox
from ledgerflow.store.sql import SQLStore, normalise_url
from reporting import command_line, cpu_model, latency_summary, num, progress, ratio, table

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_DIR = ROOT / "contrib" / "examples" / "invoice_approval"
EXAMPLE = EXAMPLE_DIR / "invoice_approval.yaml"
EXAMPLE_APP = "invoice_app"  # its tables (invoices, payments) and setup(engine)
WORKFLOW = "InvoiceApproval"
TENANT = "bench"
EVENTS_PER_EXECUTION = 10
WORKER_THREADS = 2
POLL_INTERVAL = 0.05
LEASE_TTL = 30.0
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
BACKENDS = ("sqlite", "postgresql")

REJECT_BY_CLERK: dict[str, Any] = {"rejected_by": "sam", "reason": "looks like a duplicate"}


@dataclass(frozen=True)
class Config:
    """The sizes of one run."""

    quick: bool
    enqueue_executions: int
    e2e_executions: int
    ledger_sizes: tuple[int, ...]
    process_rounds: int
    worker_timeout: float

    @classmethod
    def make(cls, quick: bool) -> Config:
        if quick:
            return cls(True, 20, 10, (10, 100, 10_000), 5, 120.0)
        return cls(False, 200, 100, (10, 1_000, 100_000), 10, 300.0)


# ------------------------------------------------------------------------------------------------
# Databases, cleaned up by the exit stack
# ------------------------------------------------------------------------------------------------


class Databases:
    """Fresh databases with an up-to-date schema, each removed when ``stack`` closes."""

    def __init__(self, stack: contextlib.ExitStack, workdir: Path, pg_url: str) -> None:
        self.stack = stack
        self.workdir = workdir
        self.pg_admin = sa.make_url(normalise_url(pg_url)).set(drivername="postgresql")

    def _admin(self) -> psycopg.Connection[Any]:
        url = self.pg_admin.render_as_string(hide_password=False)
        return psycopg.connect(url, autocommit=True, connect_timeout=10)

    def server_info(self) -> dict[str, str]:
        """The PostgreSQL server's version and durability settings."""
        with self._admin() as conn:
            return {
                name: str(conn.execute(f"SHOW {name}").fetchone()[0])  # type: ignore[index]
                for name in ("server_version", "fsync", "synchronous_commit", "shared_buffers")
            }

    def create(self, backend: str, label: str) -> str:
        """A new, empty, upgraded database on ``backend``; returns its URL."""
        if backend == "sqlite":
            url = f"sqlite:///{self.workdir / label}.db"
        else:
            name = f"ledgerflow_bench_{uuid.uuid4().hex[:12]}"
            with self._admin() as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            self.stack.callback(self._drop, name)
            url = self.pg_admin.set(database=name).render_as_string(hide_password=False)
        store = SQLStore(url)
        try:
            store.upgrade()
        finally:
            store.close()
        return url

    def _drop(self, name: str) -> None:
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def open_engine(url: str) -> Iterator[Engine]:
    """An engine on ``url`` with the InvoiceApproval example set up: its app module's tables
    created and the workflow registered."""
    if str(EXAMPLE_DIR) not in sys.path:
        sys.path.insert(0, str(EXAMPLE_DIR))
    invoice_app = importlib.import_module(EXAMPLE_APP)
    engine = Engine(url)
    try:
        invoice_app.setup(engine)
        yield engine
    finally:
        engine.close()


# ------------------------------------------------------------------------------------------------
# 1 and 2: the event plan, enqueue latency, end to end
# ------------------------------------------------------------------------------------------------


def planned_event(k: int, i: int) -> tuple[str, str, dict[str, Any], str]:
    """Event ``k`` (of :data:`EVENTS_PER_EXECUTION`) of execution ``i``: name, role, payload and
    the status it must end in."""
    if k == 0:
        invoice = {"id": f"INV-{i}", "total": 100.0 + i, "customer_id": f"C-{i % 17}"}
        return "CreateInvoice", "clerk", {"invoice": {**invoice, "currency": "EUR"}}, "processed"
    if k == EVENTS_PER_EXECUTION - 1:
        return "ApproveInvoice", "manager", {"approved_by": "maria"}, "processed"
    return "RejectInvoice", "clerk", dict(REJECT_BY_CLERK), "rejected"  # role not permitted


def enqueue_all(engine: Engine, executions: int) -> tuple[list[str], list[float]]:
    """Create ``executions`` executions and enqueue the plan round-robin; returns their ids and
    each enqueue call's duration in seconds."""
    ids = [engine.create_execution(WORKFLOW, tenant=TENANT) for _ in range(executions)]
    durations: list[float] = []
    for k in range(EVENTS_PER_EXECUTION):
        for i, execution_id in enumerate(ids):
            name, role, payload, _ = planned_event(k, i)
            started = time.perf_counter()
            engine.enqueue_event(execution_id, name, tenant=TENANT, role=role, payload=payload)
            durations.append(time.perf_counter() - started)
    return ids, durations


def bench_enqueue(databases: Databases, backend: str, cfg: Config) -> dict[str, Any]:
    url = databases.create(backend, "enqueue")
    with open_engine(url) as engine:
        # warm the connection pool and statement caches on an execution that is not counted
        warm = engine.create_execution(WORKFLOW, tenant=TENANT)
        for k in range(3):
            name, role, payload, _ = planned_event(k, 0)
            engine.enqueue_event(warm, name, tenant=TENANT, role=role, payload=payload)
        _, durations = enqueue_all(engine, cfg.enqueue_executions)
    return latency_summary(durations)


@dataclass(frozen=True)
class WorkerRun:
    seconds: float
    events: int
    errors: int
    failures: list[str]


def run_workers(url: str, processes: int, workdir: Path, label: str, timeout: float) -> WorkerRun:
    """Start ``processes`` ``ledgerflow worker --until-idle`` subprocesses at once and wait for
    all of them to exit; every one is gone when this returns, whatever happens."""
    command = [
        sys.executable,
        "-m",
        "ledgerflow",
        "--db",
        url,
        "--app",
        EXAMPLE_APP,
        "worker",
        "--until-idle",
        "--concurrency",
        str(WORKER_THREADS),
        "--poll-interval",
        str(POLL_INTERVAL),
        "--json",
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("LEDGERFLOW_DB", "LEDGERFLOW_APP")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(EXAMPLE_DIR), env.get("PYTHONPATH")]))
    outputs = [
        (workdir / f"{label}-{n}.out", workdir / f"{label}-{n}.err") for n in range(processes)
    ]
    procs: list[subprocess.Popen[bytes]] = []
    with contextlib.ExitStack() as files:
        try:
            started = time.perf_counter()
            for out, err in outputs:
                stdout = files.enter_context(out.open("wb"))
                stderr = files.enter_context(err.open("wb"))
                procs.append(
                    subprocess.Popen(command, stdout=stdout, stderr=stderr, cwd=workdir, env=env)
                )
            deadline = started + timeout
            for proc in procs:
                proc.wait(timeout=max(deadline - time.perf_counter(), 0.01))
            seconds = time.perf_counter() - started
        finally:
            for proc in procs:
                stop_process(proc)
    events = errors = 0
    failures: list[str] = []
    for proc, (out, err) in zip(procs, outputs, strict=True):
        stderr_text = err.read_text(errors="replace").strip()
        if proc.returncode != 0:
            failures.append(f"worker exited {proc.returncode}: {stderr_text[-2000:]}")
            continue
        summary = json.loads(out.read_text())
        events += int(summary["events"])
        errors += int(summary["errors"])
        if summary["errors"]:
            failures.append(f"worker {summary['worker']}: {summary['errors']} errors")
        if stderr_text:
            print(f"worker stderr ({label}):\n{stderr_text[-2000:]}", file=sys.stderr)
    return WorkerRun(seconds=seconds, events=events, errors=errors, failures=failures)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Stop ``proc`` if it still runs: SIGTERM (it finishes the event in hand), then SIGKILL."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def check_outcomes(engine: Engine, ids: Sequence[str]) -> tuple[Counter[str], list[str]]:
    """Count the events' statuses and list every way they differ from the plan, or a projection
    from its replayed ledger."""
    statuses: Counter[str] = Counter()
    problems: list[str] = []
    for i, execution_id in enumerate(ids):
        received = [
            h for h in engine.history(execution_id, tenant=TENANT) if h.kind == "event_received"
        ]
        statuses.update(h.status or "none" for h in received)
        got = [h.status for h in received]
        want = [planned_event(k, i)[3] for k in range(EVENTS_PER_EXECUTION)]
        if got != want:
            problems.append(f"execution {execution_id}: statuses {got}, expected {want}")
        projection = engine.get_execution(execution_id, tenant=TENANT)
        replayed = engine.replay(execution_id, tenant=TENANT)
        if (replayed.name, replayed.status, dict(replayed.context)) != (
            projection.state,
            projection.status,
            dict(projection.context),
        ):
            problems.append(f"execution {execution_id}: projection differs from its replay")
    return statuses, problems


def bench_end_to_end(
    databases: Databases, backend: str, processes: int, cfg: Config
) -> dict[str, Any]:
    url = databases.create(backend, "e2e")
    timeout = cfg.worker_timeout
    with open_engine(url) as engine:
        started = time.perf_counter()
        ids, _ = enqueue_all(engine, cfg.e2e_executions)
        enqueue_seconds = time.perf_counter() - started
        total = len(ids) * EVENTS_PER_EXECUTION
        progress(f"  {total} events enqueued; starting {processes} worker process(es)")
        run = run_workers(url, processes, databases.workdir, f"{backend}-e2e", timeout)
        statuses, problems = check_outcomes(engine, ids)
        idle = run_workers(url, processes, databases.workdir, f"{backend}-idle", timeout)
    problems += run.failures + idle.failures
    if run.events != total:
        problems.append(f"the workers report {run.events} events processed, not {total}")
    if idle.events:
        problems.append(f"the idle run processed {idle.events} events")
    busy = run.seconds - idle.seconds
    return {
        "events": total,
        "executions": len(ids),
        "worker_processes": processes,
        "enqueue_seconds": enqueue_seconds,
        "seconds": run.seconds,
        "events_per_second": total / run.seconds,
        "idle_run_seconds": idle.seconds,
        "events_per_second_without_startup": total / busy if busy > 0 else None,
        "statuses": dict(statuses),
        "problems": problems,
    }


# ------------------------------------------------------------------------------------------------
# 3: replay cost
# ------------------------------------------------------------------------------------------------


def build_ledger(definition: Definition, size: int) -> list[Record]:
    """A valid ledger of ``size`` records, or one more when the workflow allows no ledger of
    exactly that length: an invoice created and escalated by its timer (however many records
    the example's steps make of that), then refused by clerks, who may not reject (2 records
    each)."""
    invoice = {"id": "INV-BIG", "total": 20_000.0, "customer_id": "C-1"}
    refusal = EventReceived(seq=0, name="RejectInvoice", payload=REJECT_BY_CLERK, role="clerk")
    start = [
        EventReceived(seq=0, name="CreateInvoice", payload={"invoice": invoice}, role="clerk"),
        EventReceived(seq=0, name="EscalationDue", origin="timer"),
    ]
    prefix = len(ledgerflow.simulate(definition, start))
    if size < prefix:
        raise ValueError(f"ledger size must be at least {prefix}, not {size}")
    ledger = ledgerflow.simulate(definition, [*start, *[refusal] * -(-(size - prefix) // 2)])
    if len(ledger) not in (size, size + 1):
        raise RuntimeError(f"built a ledger of {len(ledger)} records, not about {size}")
    return ledger


# the columns SQLStore.set_event_outcome sets, for many events in one executemany; keyed by
# event id (a unique index) because PostgreSQL may plan set_event_outcome's own WHERE clause as a
# scan of the execution's whole ledger (see write_ledger)
_SET_OUTCOMES = (
    events.update()
    .where(events.c.event_id == sa.bindparam("b_event_id"))
    .values(
        status=sa.bindparam("b_status"),
        outcome=sa.bindparam("b_outcome"),
        detail=sa.bindparam("b_detail"),
        processed_at=sa.bindparam("b_processed_at"),
    )
)


def write_ledger(engine: Engine, definition: Definition, ledger: Sequence[Record]) -> str:
    """Store ``ledger`` as a new execution whose every event was decided, as a worker would
    have left it, in one transaction; returns the execution's id.

    The records and the projection go through the store's own functions. The events' outcomes
    are set by one batched UPDATE instead of a ``set_event_outcome`` call per event: that costs
    a round trip per event and, on PostgreSQL, once the statement is prepared its generic plan
    may use the ``(execution_id, client_key)`` index and filter on ``seq``, reading the whole
    ledger for every event: quadratic, tens of minutes for 100,000 records.
    """
    store = engine.store
    execution_id = uuid.uuid4().hex
    now = store.clock()
    state = ledgerflow.fold(definition, ledger)
    with store.write() as conn:
        store.insert_execution(
            conn, execution_id, TENANT, ledgerflow.fold(definition, ledger[:1]), ledger[0]
        )
        event_ids: dict[int, str] = {}
        batch = 5_000
        for first in range(1, len(ledger), batch):
            records = ledger[first : first + batch]
            ids = store.insert_records(conn, execution_id, TENANT, records)
            event_ids.update((r.seq, i) for r, i in zip(records, ids, strict=True))
        outcomes: list[dict[str, Any]] = []
        for record in ledger:
            if isinstance(record, TransitionApplied):
                status, outcome, detail = "processed", "applied", record.target
            elif isinstance(record, EventRejected):
                status, outcome, detail = "rejected", record.reason.value, record.detail
            else:
                continue
            outcomes.append(
                {
                    "b_event_id": event_ids[record.event_seq],
                    "b_status": status,
                    "b_outcome": outcome,
                    "b_detail": detail,
                    "b_processed_at": now,
                }
            )
        for first in range(0, len(outcomes), batch):
            conn.execute(_SET_OUTCOMES, outcomes[first : first + batch])
        store.save_projection(conn, execution_id, state)
        # every event is decided: its wake-ups are handled (one statement, not the engine's
        # per-event check, which a planner without statistics on fresh bulk rows scans badly)
        conn.execute(
            outbox.update().where(outbox.c.execution_id == execution_id).values(published_at=now)
        )
    return execution_id


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def time_process(engine: Engine, execution_id: str, rounds: int) -> tuple[float, list[str]]:
    """The median time of :meth:`Engine.process` deciding one new (rejected) event, over
    ``rounds`` rounds after one warm-up round; and any problem seen."""
    samples: list[float] = []
    problems: list[str] = []
    owner = f"bench-{os.getpid()}"
    for n in range(rounds + 1):
        engine.enqueue_event(
            execution_id, "RejectInvoice", tenant=TENANT, role="clerk", payload=REJECT_BY_CLERK
        )
        token = engine.store.take_lease(execution_id, owner, LEASE_TTL)
        if token is None:
            raise RuntimeError(f"execution {execution_id}: lease is held")
        try:
            started = time.perf_counter()
            done = engine.process(
                execution_id, tenant=TENANT, lease=Lease(owner=owner, token=token, ttl=LEASE_TTL)
            )
            elapsed = time.perf_counter() - started
        finally:
            engine.store.release_lease(execution_id, owner, token)
        if done != 1:
            problems.append(f"execution {execution_id}: process decided {done} events, not 1")
        if n:
            samples.append(elapsed)
    return statistics.median(samples), problems


def check_replay(engine: Engine, execution_id: str, expected: State) -> list[str]:
    replayed = engine.replay(execution_id, tenant=TENANT)
    projection = engine.get_execution(execution_id, tenant=TENANT)
    if (replayed.name, replayed.seq, replayed.decided_seq) != (
        projection.state,
        projection.seq,
        projection.decided_seq,
    ) or replayed.name != expected.name:
        return [f"execution {execution_id}: replay {replayed} differs from the projection"]
    return []


def bench_replay(databases: Databases, cfg: Config) -> dict[str, Any]:
    definition = ledgerflow.load(EXAMPLE)
    ledgers = {size: build_ledger(definition, size) for size in cfg.ledger_sizes}
    fold_ms = {}
    for size, ledger in ledgers.items():
        repeats = max(3, min(1_000, 100_000 // size))
        fold_ms[size] = (
            median_seconds(functools.partial(ledgerflow.fold, definition, ledger), repeats) * 1e3
        )
    results: dict[str, Any] = {"sizes": list(cfg.ledger_sizes), "fold_ms": fold_ms, "problems": []}
    for backend in BACKENDS:
        progress(f"  {backend}: writing ledgers of {', '.join(map(str, ledgers))} records")
        url = databases.create(backend, "replay")
        build_s: dict[int, float] = {}
        replay_ms: dict[int, float] = {}
        process_ms: dict[int, float] = {}
        with open_engine(url) as engine:
            for size, ledger in ledgers.items():
                started = time.perf_counter()
                execution_id = write_ledger(engine, definition, ledger)
                build_s[size] = time.perf_counter() - started
                repeats = max(3, min(20, 10_000 // size))
                replay_ms[size] = 1e3 * median_seconds(
                    functools.partial(engine.replay, execution_id, tenant=TENANT), repeats
                )
                progress(f"  {backend}: {size} records written; timing process")
                seconds, problems = time_process(engine, execution_id, cfg.process_rounds)
                process_ms[size] = 1e3 * seconds
                expected = ledgerflow.fold(definition, ledger)
                results["problems"] += problems + check_replay(engine, execution_id, expected)
        results[backend] = {"build_s": build_s, "replay_ms": replay_ms, "process_ms": process_ms}
    return results


# ------------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu": cpu_model(),
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "ledgerflow": ledgerflow.__version__,
        "sqlalchemy": version("SQLAlchemy"),
        "psycopg": version("psycopg"),
        "sqlite": sqlite3.sqlite_version,
        "load_average": os.getloadavg()[0],
    }


def report(results: dict[str, Any], cfg: Config) -> str:
    m = results["machine"]
    pg = results["postgresql_server"]
    lines = [
        "ledgerflow ledger benchmark" + (" (--quick)" if cfg.quick else ""),
        f"command: {results['command']}",
        f"machine: nproc {m['nproc']} ({m['cpu']}), {m['platform']}",
        f"python:  {m['python']}; ledgerflow {m['ledgerflow']}, SQLAlchemy {m['sqlalchemy']}, "
        f"psycopg {m['psycopg']}",
        f"stores:  SQLite {m['sqlite']} file in a temporary directory (WAL, synchronous=FULL); "
        f"PostgreSQL {pg['server_version']} (fsync={pg['fsync']}, "
        f"synchronous_commit={pg['synchronous_commit']}, shared_buffers={pg['shared_buffers']})",
        "load:    1-minute load average {:.2f} at the start, {:.2f} at the end".format(
            *results["load_average"]
        ),
        "",
    ]
    enq = results["enqueue"]
    n = enq["sqlite"]["n"]
    lines += [
        f"1. Enqueue latency: one Engine.enqueue_event call, {n:,} calls over "
        f"{cfg.enqueue_executions} executions of {WORKFLOW}",
        table(
            ["", "SQLite", "PostgreSQL", "PostgreSQL/SQLite"],
            [
                [
                    label,
                    num(enq["sqlite"][key]),
                    num(enq["postgresql"][key]),
                    ratio(enq["postgresql"][key], enq["sqlite"][key]),
                ]
                for label, key in (
                    ("p50 (ms)", "p50_ms"),
                    ("p99 (ms)", "p99_ms"),
                    ("mean (ms)", "mean_ms"),
                    ("max (ms)", "max_ms"),
                )
            ],
        ),
        "",
    ]
    e2e = results["end_to_end"]
    s, p = e2e["sqlite"], e2e["postgresql"]
    lines += [
        f"2. End to end: {s['events']:,} events over {s['executions']} executions enqueued, then",
        f"   `ledgerflow worker --until-idle --concurrency {WORKER_THREADS} --poll-interval "
        f"{POLL_INTERVAL}` processes timed from start to exit",
        table(
            [
                "",
                f"SQLite, {s['worker_processes']} proc",
                f"PostgreSQL, {p['worker_processes']} procs",
                "PostgreSQL/SQLite",
            ],
            [
                [
                    "wall time (s)",
                    num(s["seconds"]),
                    num(p["seconds"]),
                    ratio(p["seconds"], s["seconds"]),
                ],
                [
                    "events/s",
                    num(s["events_per_second"]),
                    num(p["events_per_second"]),
                    ratio(p["events_per_second"], s["events_per_second"]),
                ],
                [
                    "idle run: start-up to exit (s)",
                    num(s["idle_run_seconds"]),
                    num(p["idle_run_seconds"]),
                    ratio(p["idle_run_seconds"], s["idle_run_seconds"]),
                ],
                [
                    "events/s less the idle run",
                    num(s["events_per_second_without_startup"]),
                    num(p["events_per_second_without_startup"]),
                    ratio(
                        p["events_per_second_without_startup"],
                        s["events_per_second_without_startup"],
                    ),
                ],
                ["event statuses", statuses(s), statuses(p), ""],
                ["check", check(s["problems"]), check(p["problems"]), ""],
            ],
        ),
        "",
    ]
    rep = results["replay"]
    sizes: list[int] = rep["sizes"]
    small, big = sizes[0], sizes[-1]
    rows: list[list[str]] = [
        ["ledgerflow.fold from zero (in memory)"]
        + [num(rep["fold_ms"][n]) for n in sizes]
        + [ratio(rep["fold_ms"][big], rep["fold_ms"][small])]
    ]
    for key, what in (("replay_ms", "Engine.replay (load+decode+fold)"), ("process_ms", "")):
        for backend, name in (("sqlite", "SQLite"), ("postgresql", "PostgreSQL")):
            values = rep[backend][key]
            label = f"{what}, {name}" if what else f"Engine.process 1 new event, {name}"
            rows.append(
                [label] + [num(values[n]) for n in sizes] + [ratio(values[big], values[small])]
            )
    for backend, name in (("sqlite", "SQLite"), ("postgresql", "PostgreSQL")):
        values = rep[backend]["build_s"]
        rows.append(
            [f"(bulk write of the ledger, s), {name}"] + [num(values[n]) for n in sizes] + [""]
        )
    lines += [
        f"3. Replay cost (ms) by ledger length; process: median of {cfg.process_rounds} rounds",
        table(["records in the ledger", *(f"{n:,}" for n in sizes), f"{big:,}/{small:,}"], rows),
        f"  check: {check(rep['problems'])}",
    ]
    return "\n".join(lines)


def statuses(e2e: dict[str, Any]) -> str:
    counts: dict[str, int] = e2e["statuses"]
    return ", ".join(f"{counts[k]} {k}" for k in sorted(counts)) or "none"


def check(problems: Sequence[str]) -> str:
    return "ok" if not problems else f"FAILED ({len(problems)} problems)"


# ------------------------------------------------------------------------------------------------


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="every N about 10x smaller")
    parser.add_argument(
        "--pg",
        default=DEFAULT_PG,
        metavar="URL",
        help=f"a database on the PostgreSQL server to use (default {DEFAULT_PG})",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results here")
    args = parser.parse_args(argv)
    cfg = Config.make(args.quick)
    signal.signal(signal.SIGTERM, _terminate)
    results: dict[str, Any] = {
        "command": command_line(sys.argv),
        "machine": machine_info(),
        "config": cfg.__dict__,
    }
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ledgerflow-bench-")))
        databases = Databases(stack, workdir, args.pg)
        results["postgresql_server"] = databases.server_info()
        results["enqueue"] = {}
        for backend in BACKENDS:
            progress(f"1. enqueue latency on {backend}")
            results["enqueue"][backend] = bench_enqueue(databases, backend, cfg)
        results["end_to_end"] = {}
        for backend, processes in (("sqlite", 1), ("postgresql", 2)):
            progress(f"2. end to end on {backend}")
            results["end_to_end"][backend] = bench_end_to_end(databases, backend, processes, cfg)
        progress("3. replay cost")
        results["replay"] = bench_replay(databases, cfg)
        progress("cleaning up")
    results["total_seconds"] = time.perf_counter() - started
    results["load_average"] = [results["machine"]["load_average"], os.getloadavg()[0]]
    print(report(results, cfg))
    print(f"\ntotal time: {results['total_seconds']:.0f} s")
    problems = [
        *results["end_to_end"]["sqlite"]["problems"],
        *results["end_to_end"]["postgresql"]["problems"],
        *results["replay"]["problems"],
    ]
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
