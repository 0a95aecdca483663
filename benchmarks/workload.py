"""The reference workload of the comparison benchmark, the same for every system.

One event with a small JSON payload (six fields) starts an "invoice approval" workflow of three
actions: ``A`` and ``B`` independent, ``C`` after both. Each action makes one committed write to
the table ``bench_effects``::

    INSERT … ON CONFLICT (idem_key) DO UPDATE SET dup_hits = bench_effects.dup_hits + 1

keyed ``<workflow>:<action>``, so an action run twice is counted, never hidden; ``C`` also
stores how many of its workflow's ``A``/``B`` rows it saw (``ab_seen``). The *steps* workload is
a workflow of ten sequential steps: nine no-ops, and a tenth that writes one row to
``bench_steps_done`` so that its end can be seen the same way for every system.

A *system* (ledgerflow in one of its configurations, a peer engine, or the raw floor) gives
:func:`measure` its worker commands and a client; :func:`measure` runs the whole measurement:
fresh tables, workers started, a warm-up, ``N`` workflows submitted by one client as fast as it
can (each call timed), waiting for the last ``C`` row, verification, then the steps workload.
This module needs only the standard library and SQLAlchemy, so that it runs in the
benchmark's own environment and in the peers' (``benchmarks/.venv-peers``) alike.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa

BENCHMARKS = Path(__file__).resolve().parent
ACTIONS = ("A", "B", "C")
STEPS = 10
DONE_POLL = 0.02

# the one statement each action runs; C's ab_seen counts its workflow's A and B rows first
EFFECT_SQL = (
    "INSERT INTO bench_effects (idem_key, workflow, action, ab_seen, written_at) "
    "VALUES (:key, :workflow, :action, :ab_seen, :now) "
    "ON CONFLICT (idem_key) DO UPDATE SET dup_hits = bench_effects.dup_hits + 1"
)
COUNT_AB_SQL = (
    "SELECT count(*) FROM bench_effects WHERE workflow = :workflow AND action IN ('A', 'B')"
)
STEPS_DONE_SQL = (
    "INSERT INTO bench_steps_done (workflow, written_at) VALUES (:workflow, :now) "
    "ON CONFLICT (workflow) DO UPDATE SET dup_hits = bench_steps_done.dup_hits + 1"
)

TABLES = (
    "CREATE TABLE IF NOT EXISTS bench_effects ("
    " idem_key VARCHAR(200) PRIMARY KEY, workflow VARCHAR(100) NOT NULL,"
    " action VARCHAR(1) NOT NULL, ab_seen INTEGER, dup_hits INTEGER NOT NULL DEFAULT 0,"
    " written_at DOUBLE PRECISION NOT NULL)",
    "CREATE INDEX IF NOT EXISTS bench_effects_workflow ON bench_effects (workflow)",
    "CREATE TABLE IF NOT EXISTS bench_steps_done ("
    " workflow VARCHAR(100) PRIMARY KEY, dup_hits INTEGER NOT NULL DEFAULT 0,"
    " written_at DOUBLE PRECISION NOT NULL)",
)


def payload(workflow: str, n: int) -> dict[str, Any]:
    """The event that starts workflow ``workflow`` (the ``n``-th): six fields."""
    return {
        "workflow": workflow,
        "invoice_id": f"INV-{n:07d}",
        "customer_id": f"C-{n % 97}",
        "amount": round(100 + n * 1.37, 2),
        "currency": "EUR",
        "submitted_by": "clerk-7",
    }


def effect_params(workflow: str, action: str, ab_seen: int | None) -> dict[str, Any]:
    """The parameters of :data:`EFFECT_SQL` for one action of one workflow."""
    return {
        "key": f"{workflow}:{action}",
        "workflow": workflow,
        "action": action,
        "ab_seen": ab_seen,
        "now": time.time(),
    }


def write_effect(conn: sa.Connection, workflow: str, action: str) -> int | None:
    """Action ``action``'s one write, on ``conn`` (in the caller's transaction); C first counts
    what it sees of A and B. Returns ``ab_seen``."""
    seen: int | None = None
    if action == "C":
        seen = int(conn.execute(sa.text(COUNT_AB_SQL), {"workflow": workflow}).scalar_one())
    conn.execute(sa.text(EFFECT_SQL), effect_params(workflow, action, seen))
    return seen


def write_steps_done(conn: sa.Connection, workflow: str) -> None:
    """The tenth step's write, on ``conn`` (in the caller's transaction)."""
    conn.execute(sa.text(STEPS_DONE_SQL), {"workflow": workflow, "now": time.time()})


def create_tables(url: str) -> None:
    """Create the workload's tables in the database at ``url``, if missing."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            for statement in TABLES:
                conn.execute(sa.text(statement))
    finally:
        engine.dispose()


# ------------------------------------------------------------------------------------------------
# Verification
# ------------------------------------------------------------------------------------------------


@dataclass
class Verdict:
    """What one run left in ``bench_effects`` for its workflows, and every way it differs from
    each action done exactly once."""

    rows: int = 0
    per_action: dict[str, int] = field(default_factory=dict)
    c_saw_both: int = 0
    dup_hits: int = 0
    first_written: float | None = None
    last_c_written: float | None = None
    problems: list[str] = field(default_factory=list)


def verify(conn: sa.Connection, prefix: str, n: int) -> Verdict:
    """Check the rows of the ``n`` workflows whose names start with ``prefix``: exactly 3N
    rows, N per action, every C saw both A and B; and sum their duplicate hits."""
    like = {"prefix": f"{prefix}%"}
    verdict = Verdict()
    for action, count, dups in conn.execute(
        sa.text(
            "SELECT action, count(*), coalesce(sum(dup_hits), 0) FROM bench_effects "
            "WHERE workflow LIKE :prefix GROUP BY action"
        ),
        like,
    ).all():
        verdict.per_action[str(action)] = int(count)
        verdict.dup_hits += int(dups)
    verdict.rows = sum(verdict.per_action.values())
    verdict.c_saw_both = int(
        conn.execute(
            sa.text(
                "SELECT count(*) FROM bench_effects "
                "WHERE workflow LIKE :prefix AND action = 'C' AND ab_seen = 2"
            ),
            like,
        ).scalar_one()
    )
    first, last = conn.execute(
        sa.text(
            "SELECT min(written_at), max(CASE WHEN action = 'C' THEN written_at END) "
            "FROM bench_effects WHERE workflow LIKE :prefix"
        ),
        like,
    ).one()
    verdict.first_written, verdict.last_c_written = first, last
    if verdict.rows != 3 * n:
        verdict.problems.append(f"{verdict.rows} rows, expected {3 * n}")
    for action in ACTIONS:
        if verdict.per_action.get(action, 0) != n:
            verdict.problems.append(
                f"{verdict.per_action.get(action, 0)} rows of action {action}, expected {n}"
            )
    if verdict.c_saw_both != n:
        verdict.problems.append(f"only {verdict.c_saw_both} of {n} C rows saw both A and B")
    return verdict


def count_c(conn: sa.Connection, prefix: str) -> int:
    """How many C rows the workflows named ``prefix…`` have written so far."""
    return int(
        conn.execute(
            sa.text(
                "SELECT count(*) FROM bench_effects WHERE workflow LIKE :prefix AND action = 'C'"
            ),
            {"prefix": f"{prefix}%"},
        ).scalar_one()
    )


def steps_done(conn: sa.Connection, prefix: str) -> tuple[int, float | None, int]:
    """How many steps workflows named ``prefix…`` have finished, the last one's time, and
    their duplicate hits."""
    count, last, dups = conn.execute(
        sa.text(
            "SELECT count(*), max(written_at), coalesce(sum(dup_hits), 0) FROM bench_steps_done "
            "WHERE workflow LIKE :prefix"
        ),
        {"prefix": f"{prefix}%"},
    ).one()
    return int(count), last, int(dups)


# ------------------------------------------------------------------------------------------------
# A system and its workers
# ------------------------------------------------------------------------------------------------


class System(Protocol):
    """What :func:`measure` needs of a system: its worker processes and one client."""

    name: str
    effects_url: str
    """The database the actions write ``bench_effects`` to (SQLAlchemy URL)."""
    has_steps: bool
    """Whether the system runs the steps workload."""

    def ready(self) -> bool:
        """Whether the workers have set up what the client needs (polled before the warm-up)."""
        ...

    def worker_commands(self) -> list[list[str]]:
        """The command of each worker process, started with :data:`BENCHMARKS` as cwd."""
        ...

    def worker_env(self) -> dict[str, str]:
        """Environment variables the workers need besides this process's."""
        ...

    def submit(self, workflow: str, data: Mapping[str, Any]) -> None:
        """Start one invoice workflow with the event payload ``data``: one client call."""
        ...

    def submit_steps(self, workflow: str) -> None:
        """Start one steps workflow."""
        ...

    def close(self) -> None:
        """Release the client's connections."""
        ...


def _die_with_parent() -> None:
    """In a worker, before exec: be sent SIGTERM when the benchmark dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Workers:
    """Worker processes started for one measurement, with their logs."""

    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def start(
        self, commands: Sequence[Sequence[str]], env: Mapping[str, str], logdir: Path
    ) -> None:
        full_env = {**os.environ, **env}
        full_env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(BENCHMARKS), full_env.get("PYTHONPATH")])
        )
        for command in commands:
            log = logdir / f"worker-{len(self.logs)}.log"
            with log.open("wb") as out:
                self.processes.append(
                    subprocess.Popen(
                        list(command),
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        cwd=BENCHMARKS,
                        env=full_env,
                        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                    )
                )
            self.logs.append(log)

    def check_alive(self) -> None:
        for proc, log in zip(self.processes, self.logs, strict=True):
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"a worker exited {proc.returncode}:\n{tail}")

    def stop(self) -> None:
        """SIGTERM every worker (each finishes what it holds), then wait; kill after 20 s."""
        for proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.processes:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# ------------------------------------------------------------------------------------------------
# One measurement
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """The sizes of one measurement."""

    workflows: int
    warmup: int
    steps_workflows: int
    timeout: float


def _steps_run(
    conn: sa.Connection,
    workers: Workers,
    sizes: Sizes,
    submit: Callable[[str], None],
    prefix: str,
    result: Measurement,
    what: str,
) -> tuple[float | None, int]:
    """Submit the steps workflows through ``submit`` and wait for their last row; their
    steps per second (``None`` when none finished) and how many finished, with the problems
    and duplicate hits added to ``result`` (a shortfall is a problem: the steps per second
    count only those finished)."""
    started = time.time()
    for i in range(sizes.steps_workflows):
        submit(f"{prefix}{i:06d}")

    def finished() -> bool:
        value = steps_done(conn, prefix)[0] >= sizes.steps_workflows
        conn.rollback()
        return value

    try:
        wait_until(finished, sizes.timeout, workers, what)
    except TimeoutError as exc:
        result.problems.append(str(exc))
    count, last, dups = steps_done(conn, prefix)
    conn.rollback()
    result.steps_dup_hits += dups
    if count != sizes.steps_workflows:
        result.problems.append(f"{what}: {count} of {sizes.steps_workflows} workflows finished")
    if last is None or not count:
        return None, count
    return count * STEPS / (last - started), count


@dataclass
class Measurement:
    """The figures of one system, once."""

    system: str
    workflows: int
    workflows_per_second: float | None = None
    actions_per_second: float | None = None
    submit_ms: list[float] = field(default_factory=list)
    submit_seconds: float = 0.0
    steps_workflows: int = 0
    steps_per_second: float | None = None
    steps_dup_hits: int = 0
    quick_steps_per_second: float | None = None
    """ledgerflow only: the same steps workload with its no-op action registered with
    ``checkpoint=False`` (each result recorded with the event's commit)."""
    verdict: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def wait_until(condition: Callable[[], bool], timeout: float, workers: Workers, what: str) -> None:
    """Poll ``condition`` until true; raise after ``timeout`` s or when a worker dies."""
    deadline = time.monotonic() + timeout
    while not condition():
        workers.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done after {timeout:.0f} s")
        time.sleep(DONE_POLL)


def measure(system: System, sizes: Sizes, logdir: Path, label: str) -> Measurement:
    """Run the workload on ``system``: start its workers, warm up, submit and time N invoice
    workflows, verify, then the steps workload; the workers are stopped when it returns."""
    result = Measurement(system=system.name, workflows=sizes.workflows)
    logdir = logdir / label
    logdir.mkdir(parents=True, exist_ok=True)
    create_tables(system.effects_url)
    db = sa.create_engine(system.effects_url)
    workers = Workers()
    try:
        workers.start(system.worker_commands(), system.worker_env(), logdir)
        wait_until(system.ready, 180.0, workers, f"{system.name} start")
        with db.connect() as conn:

            def done(prefix: str, n: int) -> Callable[[], bool]:
                def check() -> bool:
                    value = count_c(conn, prefix) >= n
                    conn.rollback()  # a fresh snapshot next time
                    return value

                return check

            warm = f"{label}-warm-"
            for i in range(sizes.warmup):
                system.submit(f"{warm}{i:06d}", payload(f"{warm}{i:06d}", i))
            wait_until(done(warm, sizes.warmup), 180.0, workers, f"{system.name} warm-up")

            prefix = f"{label}-wf-"
            names = [f"{prefix}{i:06d}" for i in range(sizes.workflows)]
            events = [payload(name, i) for i, name in enumerate(names)]
            started = time.time()
            for name, data in zip(names, events, strict=True):
                t0 = time.perf_counter()
                system.submit(name, data)
                result.submit_ms.append((time.perf_counter() - t0) * 1000)
            result.submit_seconds = time.time() - started
            try:
                wait_until(done(prefix, sizes.workflows), sizes.timeout, workers, system.name)
            except TimeoutError as exc:
                result.problems.append(str(exc))
            verdict = verify(conn, prefix, sizes.workflows)
            conn.rollback()
            result.verdict = asdict(verdict)
            result.problems += verdict.problems
            if verdict.last_c_written is not None:
                elapsed = verdict.last_c_written - started
                result.workflows_per_second = verdict.per_action.get("C", 0) / elapsed
                result.actions_per_second = verdict.rows / elapsed

            if sizes.steps_workflows and system.has_steps:
                result.steps_per_second, result.steps_workflows = _steps_run(
                    conn,
                    workers,
                    sizes,
                    system.submit_steps,
                    f"{label}-steps-",
                    result,
                    f"{system.name} steps",
                )
            submit_quick = getattr(system, "submit_quick_steps", None)
            if sizes.steps_workflows and system.has_steps and submit_quick is not None:
                result.quick_steps_per_second, _ = _steps_run(
                    conn,
                    workers,
                    sizes,
                    submit_quick,
                    f"{label}-quick-",
                    result,
                    f"{system.name} steps not checkpointed",
                )
    except (RuntimeError, TimeoutError) as exc:
        result.problems.append(str(exc))
    finally:
        workers.stop()
        system.close()
        db.dispose()
    return result


# ------------------------------------------------------------------------------------------------
# Running a peer's measurement in its own virtual environment
# ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def result_file(path: Path) -> Iterator[dict[str, Any]]:
    """A dict written to ``path`` as JSON on leaving, also after an error."""
    out: dict[str, Any] = {}
    try:
        yield out
    finally:
        path.write_text(json.dumps(out, indent=1, default=str))


def peer_main(make: Callable[[dict[str, Any]], System], argv: Sequence[str] | None = None) -> int:
    """The command line of a peer module run in the peers' environment: ``python peer_x.py
    CONFIG.json OUT.json``; runs :func:`measure` and writes the measurement as JSON."""
    args = list(sys.argv[1:] if argv is None else argv)
    config = json.loads(Path(args[0]).read_text())
    with result_file(Path(args[1])) as out:
        system = make(config)
        sizes = Sizes(**config["sizes"])
        out.update(asdict(measure(system, sizes, Path(config["logdir"]), config["label"])))
    return 0
