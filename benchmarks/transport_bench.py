"""Measure the transports end to end: Redis Streams against the database, with 1, 2 and 4 workers.

What is measured: for each transport (``database``: the store's outbox, woken by PostgreSQL
``NOTIFY``; ``redis``: Redis Streams from ledgerflow-redis, ``--broker redis://…?streams=4``)
and each number of worker processes (1, 2, 4), with PostgreSQL as the ledger:

1. ``python -m ledgerflow --db URL --broker B --app apps.counting_app worker --concurrency 2
   --poll-interval 0.5 --json`` processes are started (``PYTHONPATH=tests``) and awaited until
   each has written its first heartbeat, i.e. it is ready to work. 0.5 s is the worker's
   default: idle threads are woken by ``NOTIFY`` or wait in ``XREADGROUP … BLOCK``, so it bounds
   only how often an idle database-transport thread looks at the outbox (with 0.05, 4 workers'
   8 threads would run 160 claim queries a second between them on the same 2 cores);
2. one client (this process, one :class:`Engine` on the same broker) enqueues N events
   (default 2,000: 10 ``Hit`` events for each of 200 executions of the ``Counting`` workflow,
   round-robin across the executions) as fast as it can, while the workers run; each event's
   transition runs one database action that writes one row to the table ``hits``;
3. the clock runs from just before the first enqueue to the last event processed (the latest
   ``processed_at`` in the ledger) for **events/s**, and to the last action's row (the latest
   ``hits.finished``) for **actions/s**. Workers and client share one machine, so those are
   one clock. With one action per event the two figures differ only by their end times.

The duration of each ``enqueue_event`` call is the **submit latency** (p50, p99): on the
database transport, one transaction (the event, its outbox row and the ``NOTIFY``); on Redis
the same transaction and then, after the commit, the ``XADD`` of the wake-up (the fast path).
The **submit rate** is N over the whole enqueue phase: when events/s comes close to it, the one
client, not the workers, is what limits the run; the **backlog** is how many events were still
pending when the client finished. On Redis, **extra wake-ups** are the stream entries added
beyond one per event: the outbox relay in every worker publishes again the wake-up of an event
still undecided 2 s after its commit, so a backlog costs redundant deliveries.

Every measurement checks: exactly N rows in ``hits`` (each execution's in the order its events
were enqueued), N ``step_succeeded`` records, every event ``processed`` and none pending, the
workers' own counts summing to N with no errors, every worker exiting 0 after SIGTERM, and no
dead letters. A failed check makes the exit status 1; nothing is asserted about times.

The six configurations are interleaved: each of ``--rounds`` rounds (default 3) runs every
worker count on both transports, the transports' order alternating from round to round, so a
change in the machine's load falls on all of them alike. The table gives, per configuration,
the median over the rounds with the min-max, and per worker count the Redis/database ratio of
the medians (with the min-max of the rounds' own ratios): measured in the same run, on the
same machine. Each measurement gets a database of its own, ``ledgerflow_transport_bench_<run>_
<label>``, created on the server, upgraded, and dropped right after (so no configuration runs on
tables another one filled), and an emptied private Redis (``RedisServer``: ``redis-server`` on
127.0.0.1 and a free port, no persistence).

The machine is shared and small: on 2 cores, 2 worker processes already fill it, and 4 (8
worker threads, plus PostgreSQL, Redis and the client) measure contention as much as scaling.
The load average at the start and the end is printed; compare figures within one run, not
across runs or machines.

Reproduce, from the repository root, with PostgreSQL reachable (trust auth) at the ``--pg`` URL
and ``redis-server`` on the PATH::

    . .venv/bin/activate
    python benchmarks/transport_bench.py --quick    # N = 200 over 20 executions: ~2 minutes
    python benchmarks/transport_bench.py            # N = 2,000, 3 rounds: ~13 minutes
    python benchmarks/transport_bench.py --rounds 5 --json transport.json

or ``nox -s bench``. ``--pg`` names any database on the server; the benchmark connects to it only
to create and drop its own. Every worker process, database and the Redis server are removed on
exit, also after an error or SIGINT/SIGTERM (and a worker outlives a killed benchmark only
where Linux's parent-death signal is unavailable).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

import psycopg
import sqlalchemy as sa

import ledgerflow
from ledgerflow.engine import Engine
from ledgerflow.store.schema import outbox
from ledgerflow.store.sql import SQLStore, normalise_url
from ledgerflow_redis.testing import RedisServer
from reporting import command_line, cpu_model, num, percentile, progress, spread, table

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
APP = "apps.counting_app"
WORKFLOW = "Counting"
TENANT = "bench"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
TRANSPORTS = ("database", "redis")
WORKER_COUNTS = (1, 2, 4)
WORKER_THREADS = 2
POLL_INTERVAL = 0.5  # the worker's default
STREAMS = 4
READY_TIMEOUT = 60.0
DONE_POLL = 0.05


@dataclass(frozen=True)
class Config:
    """The sizes of one run."""

    quick: bool
    executions: int
    events_per_execution: int
    rounds: int
    timeout: float
    poll_interval: float

    @property
    def events(self) -> int:
        return self.executions * self.events_per_execution


def counting_app() -> ModuleType:
    """The tests' counting app (``tests/apps/counting_app.py``): the workers import it by
    ``--app``, and this process uses its ``setup`` and its ``hits`` table."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    return importlib.import_module(APP)


# ------------------------------------------------------------------------------------------------
# PostgreSQL: a database per measurement
# ------------------------------------------------------------------------------------------------


class Postgres:
    """Creates fresh, upgraded databases on the server at ``pg_url``; each is dropped when the
    exit stack it was created on closes."""

    def __init__(self, pg_url: str) -> None:
        self.admin_url = sa.make_url(normalise_url(pg_url)).set(drivername="postgresql")
        self.run_id = uuid.uuid4().hex[:8]

    def _admin(self) -> psycopg.Connection[Any]:
        url = self.admin_url.render_as_string(hide_password=False)
        return psycopg.connect(url, autocommit=True, connect_timeout=10)

    def server_info(self) -> dict[str, str]:
        """The server's version and durability settings."""
        with self._admin() as conn:
            return {
                name: str(conn.execute(f"SHOW {name}").fetchone()[0])  # type: ignore[index]
                for name in (
                    "server_version",
                    "fsync",
                    "synchronous_commit",
                    "shared_buffers",
                    "max_connections",
                )
            }

    def create(self, stack: contextlib.ExitStack, label: str) -> str:
        """A new database with the current schema, dropped when ``stack`` closes; its URL."""
        name = f"ledgerflow_transport_bench_{self.run_id}_{label}"
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        stack.callback(self._drop, name)
        url = self.admin_url.set(database=name).render_as_string(hide_password=False)
        store = SQLStore(url)
        try:
            store.upgrade()
        finally:
            store.close()
        return url

    def _drop(self, name: str) -> None:
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ------------------------------------------------------------------------------------------------
# Worker processes
# ------------------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In a worker, before exec: be sent SIGTERM when the benchmark dies, even by SIGKILL,
    so that no worker is left running (it is not ``--until-idle``)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path


def start_worker(
    url: str, broker: str, poll_interval: float, workdir: Path, label: str
) -> WorkerProcess:
    command = [
        sys.executable,
        "-m",
        "ledgerflow",
        "--db",
        url,
        "--broker",
        broker,
        "--app",
        APP,
        "worker",
        "--concurrency",
        str(WORKER_THREADS),
        "--poll-interval",
        str(poll_interval),
        "--json",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGERFLOW_", "COUNTING_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    stdout, stderr = workdir / f"{label}.out", workdir / f"{label}.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=err,
            cwd=workdir,
            env=env,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    return WorkerProcess(process, stdout, stderr)


def stop_workers(workers: Sequence[WorkerProcess]) -> None:
    """SIGTERM every worker still running (each finishes the event in hand), then wait; a
    worker that takes more than 30 s is killed."""
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.terminate()
    deadline = time.monotonic() + 30
    for worker in workers:
        try:
            worker.process.wait(timeout=max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()


def wait_ready(engine: Engine, workers: Sequence[WorkerProcess]) -> None:
    """Until every worker has written its first heartbeat: it has imported the app, built its
    engine and transport, and its threads are starting."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        running = [r for r in engine.store.worker_rows() if r.stopped_at is None]
        if len(running) >= len(workers):
            return
        for worker in workers:
            if worker.process.poll() is not None:
                log = worker.stderr.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"a worker exited {worker.process.returncode} at start:\n{log}")
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"only {len(running)} of {len(workers)} workers ready after {READY_TIMEOUT:.0f} s"
            )
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------------
# One measurement
# ------------------------------------------------------------------------------------------------


def count_pending(engine: Engine) -> int:
    with engine.store.read() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM lf_events "
                    "WHERE kind = 'event_received' AND status = 'pending'"
                )
            ).scalar_one()
        )


def enqueue_all(engine: Engine, ids: Sequence[str], per_execution: int) -> list[float]:
    """``per_execution`` ``Hit`` events to each execution, round-robin across them, numbered in
    the order each execution receives them; returns each call's duration in seconds."""
    durations: list[float] = []
    for n in range(per_execution):
        for execution_id in ids:
            started = time.perf_counter()
            engine.enqueue_event(execution_id, "Hit", tenant=TENANT, payload={"n": n})
            durations.append(time.perf_counter() - started)
    return durations


def check_ledger(
    engine: Engine, app: ModuleType, ids: Sequence[str], per_execution: int
) -> tuple[dict[str, Any], list[str]]:
    """What the run left in the database, and every way it differs from N events processed
    exactly once, in order, each with its one action's row."""
    hits: sa.Table = app.hits
    total = len(ids) * per_execution
    with engine.store.read() as conn:
        statuses: dict[str, int] = dict(
            conn.execute(
                sa.text(
                    "SELECT status, count(*) FROM lf_events WHERE kind = 'event_received' "
                    "GROUP BY status"
                )
            ).all()
        )
        succeeded = conn.execute(
            sa.text("SELECT count(*) FROM lf_events WHERE kind = 'step_succeeded'")
        ).scalar_one()
        last_processed = conn.execute(
            sa.text("SELECT max(processed_at) FROM lf_events WHERE kind = 'event_received'")
        ).scalar_one()
        relayed = conn.execute(
            sa.select(sa.func.count()).select_from(outbox).where(outbox.c.relayed_at.is_not(None))
        ).scalar_one()
        rows = conn.execute(
            sa.select(hits.c.execution_id, hits.c.n, hits.c.pid, hits.c.finished).order_by(
                hits.c.started
            )
        ).all()
    problems: list[str] = []
    if statuses != {"processed": total}:
        problems.append(f"event statuses {statuses}, expected {{'processed': {total}}}")
    if len(rows) != total:
        problems.append(f"{len(rows)} action rows in hits, expected {total}")
    if succeeded != total:
        problems.append(f"{succeeded} step_succeeded records, expected {total}")
    by_execution: dict[str, list[int]] = {}
    for row in rows:
        by_execution.setdefault(row.execution_id, []).append(row.n)
    disordered = [e for e in ids if by_execution.get(e) != list(range(per_execution))]
    if disordered:
        problems.append(
            f"{len(disordered)} executions' actions missing, doubled or out of order, e.g. "
            f"{disordered[0]}: {by_execution.get(disordered[0])}"
        )
    dead = engine.store.dead_letter_rows()
    if dead:
        problems.append(f"{len(dead)} dead letters, e.g. {dead[0].reason}")
    found = {
        "statuses": statuses,
        "action_rows": len(rows),
        "step_succeeded": succeeded,
        "last_processed_at": last_processed,
        "last_action_finished_at": max((r.finished for r in rows), default=None),
        "actions_by_pid": dict(Counter(r.pid for r in rows)),
        "dead_letters": len(dead),
        "wakeups_relayed": relayed,
    }
    return found, problems


def read_workers(workers: Sequence[WorkerProcess], total: int) -> tuple[dict[str, Any], list[str]]:
    """The workers' summaries and logs, after they stopped."""
    problems: list[str] = []
    events = errors = 0
    levels: Counter[str] = Counter()
    logs: list[str] = []
    for worker in workers:
        log = worker.stderr.read_text(errors="replace")
        for line in log.splitlines():
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[2] in ("WARNING", "ERROR", "CRITICAL"):
                levels[parts[2]] += 1
        if log.strip():
            logs.append(log[-2000:])
        if worker.process.returncode != 0:
            problems.append(f"a worker exited {worker.process.returncode}: {log[-500:]}")
            continue
        try:
            summary = json.loads(worker.stdout.read_text())
        except ValueError:
            problems.append(f"a worker printed no summary: {log[-500:]}")
            continue
        events += int(summary["events"])
        errors += int(summary["errors"])
        if summary["failing_executions"]:
            problems.append(f"worker {summary['worker']}: failing {summary['failing_executions']}")
    if events != total:
        problems.append(f"the workers report {events} events processed, not {total}")
    if errors:
        problems.append(f"the workers report {errors} errors")
    return {"events": events, "errors": errors, "log_lines": dict(levels), "logs": logs}, problems


def stream_entries_added(redis_server: RedisServer, engine: Engine) -> int | None:
    """How many wake-ups were ever added to the transport's streams (fast path and relay),
    trimmed ones included; ``None`` for the database transport."""
    streams: Sequence[str] = getattr(engine.transport, "streams", ())
    if not streams:
        return None
    with redis_server.client() as client:
        return sum(
            int(client.xinfo_stream(stream)["entries-added"])
            for stream in streams
            if client.exists(stream)
        )


@dataclass(frozen=True)
class Context:
    cfg: Config
    pg: Postgres
    redis: RedisServer
    workdir: Path
    app: ModuleType


def measure(ctx: Context, transport: str, processes: int, round_no: int) -> dict[str, Any]:
    """One configuration, once: fresh database, emptied Redis, workers started, N events
    enqueued and processed; everything it started is stopped or dropped when it returns."""
    cfg = ctx.cfg
    label = f"r{round_no}_{transport}_w{processes}"
    broker = "database" if transport == "database" else ctx.redis.url(streams=STREAMS)
    with contextlib.ExitStack() as stack:
        url = ctx.pg.create(stack, label)
        if transport == "redis":
            ctx.redis.flush()
        engine = Engine(url, broker=broker)
        stack.callback(engine.close)
        ctx.app.setup(engine)
        ids = [engine.create_execution(WORKFLOW, tenant=TENANT) for _ in range(cfg.executions)]
        ping: Callable[[], None] | None = getattr(engine.transport, "ping", None)
        if ping is not None:
            ping()  # connect the client to Redis before the clock starts
        workers: list[WorkerProcess] = []
        stack.callback(stop_workers, workers)
        for n in range(processes):
            name = f"{label}_{n}"
            workers.append(start_worker(url, broker, cfg.poll_interval, ctx.workdir, name))
        wait_ready(engine, workers)

        started = time.time()
        durations = enqueue_all(engine, ids, cfg.events_per_execution)
        enqueue_seconds = time.time() - started
        backlog = count_pending(engine)
        deadline = time.monotonic() + cfg.timeout
        left = backlog
        while left and time.monotonic() < deadline:
            time.sleep(DONE_POLL)
            left = count_pending(engine)
        observed_seconds = time.time() - started

        stop_workers(workers)
        workers_found, problems = read_workers(workers, cfg.events)
        found, ledger_problems = check_ledger(engine, ctx.app, ids, cfg.events_per_execution)
        found["stream_entries_added"] = stream_entries_added(ctx.redis, engine)
    problems = ledger_problems + problems
    if left:
        problems.insert(0, f"{left} events still pending after {cfg.timeout:.0f} s")
    events_seconds = (found["last_processed_at"] or time.time()) - started
    actions_seconds = (found["last_action_finished_at"] or time.time()) - started
    return {
        "transport": transport,
        "broker": broker,
        "worker_processes": processes,
        "round": round_no,
        "events": cfg.events,
        "seconds_to_last_event": events_seconds,
        "seconds_to_last_action": actions_seconds,
        "seconds_until_seen_done": observed_seconds,
        "events_per_second": found["statuses"].get("processed", 0) / events_seconds,
        "actions_per_second": found["action_rows"] / actions_seconds,
        "enqueue_seconds": enqueue_seconds,
        "submit_rate": cfg.events / enqueue_seconds,
        "backlog_after_enqueue": backlog,
        "submit_ms": [d * 1000 for d in durations],
        "ledger": found,
        "workers": workers_found,
        "problems": problems,
    }


# ------------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu_model(),
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "ledgerflow": ledgerflow.__version__,
        "ledgerflow_redis": version("ledgerflow-redis"),
        "redis_py": version("redis"),
        "psycopg": version("psycopg"),
        "redis_server": redis_version,
    }


def summarise(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians, min and max over the rounds of each configuration; submit latency pooled per
    configuration and per transport; Redis/database ratios per worker count."""
    configs: dict[str, Any] = {}
    for transport in TRANSPORTS:
        for processes in WORKER_COUNTS:
            mine = [
                r
                for r in runs
                if r["transport"] == transport and r["worker_processes"] == processes
            ]
            if not mine:
                continue
            submit = [ms for r in mine for ms in r["submit_ms"]]
            configs[f"{transport}/{processes}"] = {
                "events_per_second": [r["events_per_second"] for r in mine],
                "actions_per_second": [r["actions_per_second"] for r in mine],
                "submit_rate": [r["submit_rate"] for r in mine],
                "backlog_after_enqueue": [r["backlog_after_enqueue"] for r in mine],
                "extra_wakeups": [
                    r["ledger"]["stream_entries_added"] - r["events"]
                    for r in mine
                    if r["ledger"]["stream_entries_added"] is not None
                ],
                "submit_p50_ms": percentile(submit, 50),
                "submit_p99_ms": percentile(submit, 99),
                "problems": sum(len(r["problems"]) for r in mine),
                "worker_log_lines": sum(
                    (Counter(r["workers"]["log_lines"]) for r in mine), Counter()
                ),
            }
    submit_by_transport = {}
    for transport in TRANSPORTS:
        submit = [ms for r in runs if r["transport"] == transport for ms in r["submit_ms"]]
        if submit:
            submit_by_transport[transport] = {
                "n": len(submit),
                "p50_ms": percentile(submit, 50),
                "p99_ms": percentile(submit, 99),
                "mean_ms": statistics.fmean(submit),
            }
    ratios: dict[str, Any] = {}
    for processes in WORKER_COUNTS:
        db, rd = configs.get(f"database/{processes}"), configs.get(f"redis/{processes}")
        if db is None or rd is None:
            continue
        entry: dict[str, Any] = {}
        for key in ("events_per_second", "actions_per_second"):
            per_round = [
                r["redis"][key] / r["database"][key]
                for r in _paired(runs, processes)
                if r["database"][key]
            ]
            entry[key] = {
                "of_medians": statistics.median(rd[key]) / statistics.median(db[key]),
                "per_round": per_round,
            }
        ratios[str(processes)] = entry
    return {"configurations": configs, "submit": submit_by_transport, "ratios": ratios}


def _paired(runs: Sequence[dict[str, Any]], processes: int) -> list[dict[str, dict[str, Any]]]:
    """Each round's database and Redis runs with ``processes`` workers, side by side."""
    rounds: dict[int, dict[str, dict[str, Any]]] = {}
    for r in runs:
        if r["worker_processes"] == processes:
            rounds.setdefault(r["round"], {})[r["transport"]] = r
    return [pair for _, pair in sorted(rounds.items()) if len(pair) == 2]


def report(results: dict[str, Any], cfg: Config) -> str:
    m, pg, summary = results["machine"], results["postgresql_server"], results["summary"]
    configs, ratios = summary["configurations"], summary["ratios"]
    lines = [
        "ledgerflow transport benchmark" + (" (--quick)" if cfg.quick else ""),
        f"command: {results['command']}",
        f"machine: nproc {m['nproc']} ({m['cpu']}), {m['platform']}; shared with other work",
        f"python:  {m['python']}; ledgerflow {m['ledgerflow']}, ledgerflow-redis "
        f"{m['ledgerflow_redis']}, redis-py {m['redis_py']}, psycopg {m['psycopg']}",
        f"servers: PostgreSQL {pg['server_version']} (fsync={pg['fsync']}, "
        f"synchronous_commit={pg['synchronous_commit']}, shared_buffers={pg['shared_buffers']}); "
        f"{m['redis_server'].split(' sha=')[0]}, no persistence, {STREAMS} streams",
        "load:    1-minute load average {:.2f} at the start, {:.2f} at the end".format(
            *results["load_average"]
        ),
        "",
        f"{cfg.events:,} events over {cfg.executions} executions of {WORKFLOW} (one database "
        f"action each), enqueued by one client while `ledgerflow worker --concurrency "
        f"{WORKER_THREADS} --poll-interval {cfg.poll_interval}` processes run;",
        f"from the first enqueue to the last event processed / last action written; median "
        f"(min-max) of {cfg.rounds} interleaved round(s). Submit: one enqueue_event call, pooled "
        "over the rounds.",
        "Backlog: events still pending when the client finished enqueueing. Extra wake-ups: "
        "stream entries added beyond one per event (the outbox relay publishes again a wake-up",
        "whose event still waits after 2 s). Both medians.",
    ]
    header = [
        "transport, worker processes",
        "events/s",
        "actions/s",
        "submit rate/s",
        "submit p50 / p99 ms",
        "backlog",
        "extra wake-ups",
        "check",
    ]
    rows: list[list[str]] = []
    for processes in WORKER_COUNTS:
        if rows:
            rows.append([])
        for transport in TRANSPORTS:
            c = configs.get(f"{transport}/{processes}")
            if c is None:
                continue
            rows.append(
                [
                    f"{transport}, {processes}",
                    spread(c["events_per_second"]),
                    spread(c["actions_per_second"]),
                    spread(c["submit_rate"]),
                    f"{num(c['submit_p50_ms'])} / {num(c['submit_p99_ms'])}",
                    f"{statistics.median(c['backlog_after_enqueue']):.0f}",
                    f"{statistics.median(c['extra_wakeups']):.0f}" if c["extra_wakeups"] else "-",
                    "ok" if not c["problems"] else f"FAILED ({c['problems']})",
                ]
            )
        ratio = ratios.get(str(processes))
        if ratio is not None:
            rows.append(
                [
                    f"Redis/database, {processes}",
                    _ratio(ratio["events_per_second"]),
                    _ratio(ratio["actions_per_second"]),
                    "",
                    "",
                    "",
                    "",
                    "",
                ]
            )
    rows.append([])
    for transport, s in summary["submit"].items():
        rows.append(
            [
                f"{transport}: submit, all {s['n']:,} calls",
                "",
                "",
                "",
                f"{num(s['p50_ms'])} / {num(s['p99_ms'])}",
                "",
                "",
                "",
            ]
        )
    lines.append(table(header, rows))
    logged = [
        f"{key}: {', '.join(f'{n} {level}' for level, n in sorted(c['worker_log_lines'].items()))}"
        for key, c in configs.items()
        if c["worker_log_lines"]
    ]
    lines.append(
        "worker log lines: " + ("; ".join(logged) if logged else "none (no warnings, no errors)")
    )
    return "\n".join(lines)


def _ratio(entry: dict[str, Any]) -> str:
    text = f"{num(entry['of_medians'])}x"
    rounds = entry["per_round"]
    if len(rounds) > 1:
        text += f" ({num(min(rounds))}x-{num(max(rounds))}x)"
    return text


# ------------------------------------------------------------------------------------------------


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--quick", action="store_true", help="200 events over 20 executions (10x fewer)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of every configuration (default 3)"
    )
    parser.add_argument(
        "--pg",
        default=DEFAULT_PG,
        metavar="URL",
        help=f"a database on the PostgreSQL server to use (default {DEFAULT_PG})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds one measurement may take to process its events (default 300)",
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=POLL_INTERVAL,
        help="the workers' --poll-interval: how long an idle worker thread waits for a wake-up "
        f"(NOTIFY, or a blocking XREADGROUP) before looking again (default {POLL_INTERVAL})",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results here")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    cfg = Config(
        quick=args.quick,
        executions=20 if args.quick else 200,
        events_per_execution=10,
        rounds=args.rounds,
        timeout=args.timeout,
        poll_interval=args.poll_interval,
    )
    signal.signal(signal.SIGTERM, _terminate)
    load_at_start = os.getloadavg()[0]
    results: dict[str, Any] = {
        "command": command_line(sys.argv),
        "machine": machine_info(),
        "config": {**cfg.__dict__, "events": cfg.events, "streams": STREAMS},
    }
    pg = Postgres(args.pg)
    results["postgresql_server"] = pg.server_info()
    runs: list[dict[str, Any]] = []
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        workdir = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="ledgerflow-transport-"))
        )
        redis_server = stack.enter_context(RedisServer())
        ctx = Context(cfg=cfg, pg=pg, redis=redis_server, workdir=workdir, app=counting_app())
        for round_no in range(1, cfg.rounds + 1):
            order = TRANSPORTS if round_no % 2 else TRANSPORTS[::-1]
            for processes in WORKER_COUNTS:
                for transport in order:
                    progress(f"round {round_no}/{cfg.rounds}: {transport}, {processes} worker(s)")
                    run = measure(ctx, transport, processes, round_no)
                    progress(
                        f"  {num(run['events_per_second'])} events/s, "
                        f"{num(run['actions_per_second'])} actions/s"
                        + (f"; PROBLEMS: {run['problems']}" if run["problems"] else "")
                    )
                    runs.append(run)
        progress("cleaning up")
    results["total_seconds"] = time.perf_counter() - started
    results["load_average"] = [load_at_start, os.getloadavg()[0]]
    results["summary"] = summarise(runs)
    results["runs"] = runs
    print(report(results, cfg))
    print(f"\ntotal time: {results['total_seconds']:.0f} s")
    problems = [
        f"{r['transport']}, {r['worker_processes']} worker(s), round {r['round']}: {p}"
        for r in runs
        for p in r["problems"]
    ]
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
