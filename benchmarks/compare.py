"""Compare ledgerflow with the engines users would pick instead, and with the machine's floor.

Runs the reference workload of :mod:`workload` (one event starts a workflow of three actions,
A and B then C, one committed upsert each; N = 2,000 workflows submitted by one client as fast
as it can; then 500 workflows of ten sequential steps) on every system, interleaved over
``--rounds`` rounds (each round runs every system once, in an order rotated from round to round,
so that a change in the machine's load falls on all of them alike):

- ledgerflow with exactly-once database actions: SQLite embedded (one worker process);
  PostgreSQL with the database transport; PostgreSQL with Redis Streams (ledgerflow-redis);
  two worker processes of two threads each on PostgreSQL;
- DBOS Transact (steps; datasource transactions), Celery (Redis, chord, acks_late) and Dramatiq
  (Redis, group with a completion callback), in their own virtual environment,
  ``benchmarks/.venv-peers``, made from ``benchmarks/peers-requirements.txt`` when missing or
  out of date;
- the raw floor (:mod:`raw_floor`).

Every measurement gets fresh databases on a private PostgreSQL cluster (``initdb`` on a free
port; or ``--pg URL``, a server where it may create and drop databases) and an emptied private
``redis-server``, and is verified (3N rows, N per action, every C saw A and B; the duplicate
hits are summed). Then, unless ``--no-extras``, the ledger benchmark (enqueue latency and
replay cost at 10, 1,000 and 100,000 records) and the transport benchmark (1, 2 and 4 worker
processes) run against the same private server. The results, with the machine and the
versions, are written to ``docs/content/benchmarks.md`` (``--output``) and the table printed.

Reproduce, from the repository root (``redis-server`` and PostgreSQL's server programs on the
machine)::

    nox -s bench                       # or: python benchmarks/compare.py
    nox -s bench -- --quick            # N = 200, 50 steps workflows, 1 round: a few minutes
    python benchmarks/compare.py --rounds 5 --only raw,lf-redis --no-extras

The exit status is 1 when a verification failed. Nothing is asserted about times.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from types import FrameType
from typing import Any

import ledgerflow
import workload
from ledgerflow_app import LedgerflowSystem
from ledgerflow_redis.testing import RedisServer
from raw_floor import RawFloor
from reporting import (
    command_line,
    machine_info,
    markdown_table,
    num,
    percentile,
    progress,
    spread,
    table,
)
from servers import Databases, PostgresServer

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
PEERS_VENV = BENCHMARKS / ".venv-peers"
PEERS_REQUIREMENTS = BENCHMARKS / "peers-requirements.txt"
DEFAULT_OUTPUT = ROOT / "docs" / "content" / "benchmarks.md"
STREAMS = 4


@dataclass(frozen=True)
class Entry:
    """A system of the comparison: its key (for ``--only``), its name in the table, and how
    it runs (``ledgerflow``, ``peer`` or ``raw``)."""

    key: str
    name: str
    kind: str
    settings: tuple[tuple[str, Any], ...] = ()


SYSTEMS = (
    Entry("raw", "raw floor (XADD, 2 consumers, 3 inserts, XACK)", "raw"),
    Entry("lf-sqlite", "ledgerflow, SQLite, 1 worker", "ledgerflow", (("store", "sqlite"),)),
    Entry("lf-db", "ledgerflow, PostgreSQL, database transport", "ledgerflow", (("store", "pg"),)),
    Entry(
        "lf-redis",
        "ledgerflow, PostgreSQL + Redis Streams",
        "ledgerflow",
        (("store", "pg"), ("broker", "redis")),
    ),
    Entry("dbos-steps", "DBOS, steps", "peer", (("module", "peer_dbos"), ("mode", "steps"))),
    Entry(
        "dbos-tx",
        "DBOS, datasource transactions",
        "peer",
        (("module", "peer_dbos"), ("mode", "transactions")),
    ),
    Entry("celery", "Celery, chord, acks_late", "peer", (("module", "peer_celery"),)),
    Entry("dramatiq", "Dramatiq, group + callback", "peer", (("module", "peer_dramatiq"),)),
)
LEDGERFLOW_TARGETS = {"lf-redis": 0.45, "lf-db": 0.35}


# ------------------------------------------------------------------------------------------------
# The peers' virtual environment
# ------------------------------------------------------------------------------------------------


def peers_python() -> Path:
    """The peers' interpreter, after making ``benchmarks/.venv-peers`` from the pinned
    requirements if it is missing or was made from other requirements."""
    python = PEERS_VENV / "bin" / "python"
    wanted = hashlib.sha256(PEERS_REQUIREMENTS.read_bytes()).hexdigest()
    stamp = PEERS_VENV / "requirements.sha256"
    if python.exists() and stamp.exists() and stamp.read_text().strip() == wanted:
        return python
    progress(f"making {PEERS_VENV.relative_to(ROOT)} from {PEERS_REQUIREMENTS.name}")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(PEERS_VENV)], check=True)
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            str(PEERS_REQUIREMENTS),
        ],
        check=True,
    )
    stamp.write_text(wanted + "\n")
    return python


def peer_versions(python: Path) -> dict[str, str]:
    """The versions of the peers' main packages in their environment."""
    code = (
        "import json; from importlib.metadata import version as v; "
        "print(json.dumps({p: v(p) for p in ('dbos', 'celery', 'kombu', 'dramatiq', 'redis', "
        "'SQLAlchemy', 'psycopg')}))"
    )
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    versions: dict[str, str] = json.loads(out.stdout)
    return versions


# ------------------------------------------------------------------------------------------------
# One measurement of one system
# ------------------------------------------------------------------------------------------------


@dataclass
class Context:
    """What every measurement of a run shares."""

    sizes: workload.Sizes
    databases: Databases
    redis: RedisServer
    workdir: Path
    peers: Path | None


def measure(ctx: Context, entry: Entry, round_no: int) -> dict[str, Any]:
    """``entry`` once: fresh databases, an emptied Redis; returns the measurement as a dict."""
    label = f"r{round_no}-{entry.key}"
    settings = dict(entry.settings)
    ctx.redis.flush()
    with contextlib.ExitStack() as stack:
        databases = Databases(ctx.databases.admin_url, stack)
        databases.run_id = ctx.databases.run_id
        if entry.kind == "raw":
            effects = databases.url(databases.create(label.replace("-", "_")))
            system: workload.System = RawFloor(ctx.redis.url(), effects)
            return asdict(workload.measure(system, ctx.sizes, ctx.workdir, label))
        if entry.kind == "ledgerflow":
            if settings["store"] == "sqlite":
                url = f"sqlite:///{ctx.workdir / label}.db"
                processes = 1
            else:
                url = databases.url(databases.create(label.replace("-", "_")))
                processes = 2
            broker = ctx.redis.url(streams=STREAMS) if settings.get("broker") else "database"
            lf = LedgerflowSystem(entry.name, url, broker, processes, effects_url=url)
            return asdict(workload.measure(lf, ctx.sizes, ctx.workdir, label))
        assert ctx.peers is not None
        effects = databases.url(databases.create(label.replace("-", "_")), "postgresql+psycopg")
        config = {
            **settings,
            "label": label,
            "logdir": str(ctx.workdir),
            "sizes": asdict(ctx.sizes),
            "effects_url": effects,
            "system_url": databases.url(
                databases.create(label.replace("-", "_") + "_sys"), "postgresql+psycopg"
            ),
            "redis_url": ctx.redis.url(),
            "processes": 2,
        }
        config_file = ctx.workdir / f"{label}.json"
        out_file = ctx.workdir / f"{label}.out.json"
        config_file.write_text(json.dumps(config))
        env = {
            **os.environ,
            "PYTHONPATH": str(BENCHMARKS),
            "BENCH_REDIS_URL": config["redis_url"],
            "BENCH_APP_URL": effects,
        }
        done = subprocess.run(
            [str(ctx.peers), f"{settings['module']}.py", str(config_file), str(out_file)],
            cwd=BENCHMARKS,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=ctx.sizes.timeout * 3 + 300,
        )
        result = json.loads(out_file.read_text()) if out_file.exists() else {}
        if not result:
            result = {"system": entry.name, "problems": [f"no result: {done.stderr[-2000:]}"]}
        return result


# ------------------------------------------------------------------------------------------------
# Summary and report
# ------------------------------------------------------------------------------------------------


def summarise(runs: Sequence[dict[str, Any]], entries: Sequence[Entry]) -> list[dict[str, Any]]:
    """Per system: the rounds' figures, pooled submit percentiles, and per-round ratios of
    workflows/s to the raw floor's in the same round."""
    floor = {r["round"]: r.get("workflows_per_second") for r in runs if r["key"] == "raw"}
    rows = []
    for entry in entries:
        mine = [r for r in runs if r["key"] == entry.key]
        if not mine:
            continue
        submit = [ms for r in mine for ms in r.get("submit_ms", [])]
        ratios = [
            r["workflows_per_second"] / floor[r["round"]]
            for r in mine
            if r.get("workflows_per_second") and floor.get(r["round"])
        ]
        rows.append(
            {
                "key": entry.key,
                "name": entry.name,
                "workflows_per_second": [r.get("workflows_per_second") for r in mine],
                "actions_per_second": [r.get("actions_per_second") for r in mine],
                "steps_per_second": [r.get("steps_per_second") for r in mine],
                "quick_steps_per_second": [r.get("quick_steps_per_second") for r in mine],
                "submit_rate": [
                    r["workflows"] / r["submit_seconds"] for r in mine if r.get("submit_seconds")
                ],
                "submit_p50_ms": percentile(submit, 50) if submit else None,
                "submit_p99_ms": percentile(submit, 99) if submit else None,
                "ratio_to_floor": ratios,
                "dup_hits": sum(r.get("verdict", {}).get("dup_hits", 0) for r in mine)
                + sum(r.get("steps_dup_hits", 0) for r in mine),
                "problems": [p for r in mine for p in r.get("problems", [])],
            }
        )
    return rows


HEADER = [
    "system",
    "workflows/s",
    "actions/s",
    "x raw floor",
    "submit p50 / p99 ms",
    "submits/s",
    "steps/s",
    "steps/s, not checkpointed",
    "dup hits",
    "check",
]


def table_rows(summary: Sequence[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for s in summary:
        submit = f"{num(s['submit_p50_ms'])} / {num(s['submit_p99_ms'])}"
        rows.append(
            [
                s["name"],
                spread(s["workflows_per_second"]),
                spread(s["actions_per_second"]),
                spread(s["ratio_to_floor"], "x") if s["key"] != "raw" else "1x",
                submit,
                spread(s.get("submit_rate", [])),
                spread(s["steps_per_second"]),
                spread(s.get("quick_steps_per_second", [])),
                str(s["dup_hits"]),
                "ok" if not s["problems"] else f"FAILED ({len(s['problems'])})",
            ]
        )
    return rows


def target_lines(summary: Sequence[dict[str, Any]], extras: dict[str, Any]) -> list[str]:
    """Each of the issue's targets, with what this run measured."""
    by_key = {s["key"]: s for s in summary}
    lines = []
    for key, target in LEDGERFLOW_TARGETS.items():
        s = by_key.get(key)
        if s and s["ratio_to_floor"]:
            got = statistics.median(s["ratio_to_floor"])
            lines.append(
                f"- {s['name']}: end to end {num(got)}x the raw floor "
                f"(target at least {target}x): {'met' if got >= target else 'not met'}"
            )
    dbos = by_key.get("dbos-steps")
    for key in ("lf-redis", "lf-db"):
        s = by_key.get(key)
        if s and s["submit_p50_ms"] is not None:
            text = (
                f"- {s['name']}: submit (Engine.start) p50 {num(s['submit_p50_ms'])} ms, "
                f"p99 {num(s['submit_p99_ms'])} ms"
            )
            if dbos and dbos["submit_p50_ms"] is not None:
                text += f"; DBOS client enqueue p50 {num(dbos['submit_p50_ms'])} ms"
            text += " (targets: p50 no slower than DBOS's, p99 under 3 ms)"
            lines.append(text)
    steps = [
        (s["name"], statistics.median([v for v in s["steps_per_second"] if v is not None]))
        for s in summary
        if s["key"].startswith("lf-") and any(v is not None for v in s["steps_per_second"])
    ]
    if steps:
        best = max(steps, key=lambda item: item[1])
        lines.append(
            f"- durable steps, each checkpointed: at most {num(best[1])} steps/s ({best[0]}; "
            "target at least 5,000)"
        )
    quick = [
        (s["name"], statistics.median(values))
        for s in summary
        if (values := [v for v in s.get("quick_steps_per_second", []) if v is not None])
    ]
    if quick:
        best = max(quick, key=lambda item: item[1])
        lines.append(
            f"- durable steps, the no-ops not checkpointed (each result recorded with the "
            f"event's commit): at most {num(best[1])} steps/s ({best[0]}; target at least 5,000)"
        )
    replay = extras.get("replay")
    if replay:
        lines.append(f"- loading an execution: {replay} (target at most 2x)")
    return lines


def replay_ratio(ledger_json: Path) -> str | None:
    """From the ledger benchmark's JSON: what loading 100,000 records costs against 10."""
    with contextlib.suppress(OSError, ValueError, KeyError, ZeroDivisionError):
        data = json.loads(ledger_json.read_text())["replay"]
        sizes = data["sizes"]
        small, big = str(sizes[0]), str(sizes[-1])
        parts = []
        for backend in ("sqlite", "postgresql"):
            process = data[backend]["process_ms"]
            replay = data[backend]["replay_ms"]
            parts.append(
                f"{backend}: Engine.process of one new event {num(process[big] / process[small])}x"
                f", Engine.replay {num(replay[big] / replay[small])}x"
            )
        return f"{int(big):,} records against {int(small):,}: " + "; ".join(parts)
    return None


def render(results: dict[str, Any], summary: Sequence[dict[str, Any]]) -> str:
    """The Markdown page."""
    m, v, pg = results["machine"], results["versions"], results["postgresql"]
    sizes = results["sizes"]
    lines = [
        "# Benchmarks",
        "",
        "Where ledgerflow stands against the engines users would pick instead, and against what "
        "this machine can do for the same work with no framework at all. This page is written "
        "by `nox -s bench` (`python benchmarks/compare.py`); rerun it to regenerate.",
        "",
        '!!! warning "Read the ratios, not the absolute numbers"',
        "    Each figure is one run's measurement on a small, shared machine: other work ran "
        "beside it (see the load average). Compare systems within this run; numbers from "
        "another run or machine are not comparable.",
        "",
        "## The workload",
        "",
        f'One event with a six-field JSON payload starts an "invoice approval" workflow of three '
        f"actions: A and B independent, C after both. Each action makes one committed write to "
        f"PostgreSQL, `INSERT … ON CONFLICT (idem_key) DO UPDATE SET dup_hits = dup_hits + 1` "
        f"keyed by workflow and action, so a re-run is counted, never hidden; C also stores how "
        f"many of its workflow's A/B rows it saw. {sizes['workflows']:,} workflows are submitted "
        f"by one client as fast as it can, after a warm-up of {sizes['warmup']}; the clock runs "
        f"from the first submit to the last C row. Every run is verified: exactly 3N rows, N per "
        f"action, every C saw both A and B; the duplicate hits are summed. *Steps/s*: "
        f"{sizes['steps_workflows']:,} workflows of ten sequential steps (nine no-ops and a tenth "
        f"that writes a completion row), ten steps each, from the first submit to the last row; "
        f"each step's result is recorded in a transaction of its own as it returns, as DBOS "
        f"checkpoints its steps. *Steps/s, not checkpointed* (ledgerflow only): the same "
        f"workflows with the no-op registered with `checkpoint=False`, its result recorded with "
        f"the event's commit: every step is still in the ledger, durably, but one that ran "
        f"before a crash ahead of that commit runs again.",
        "",
        f"Median over {results['rounds']} interleaved round(s), with the min-max; *x raw floor* "
        "is the ratio of a system's workflows/s to the raw floor's in the same round. *Submit*: "
        "one client call that starts a workflow (for ledgerflow, `Engine.start`: the execution "
        "and its first event in one transaction), pooled over the rounds. "
        "*Submits/s*: N over the time the client took to submit them, while the workers ran: "
        "where workflows/s comes close to it, the one client, not the workers, set the pace.",
        "",
        markdown_table(HEADER, table_rows(summary)),
        "",
        "## Against the targets",
        "",
        *target_lines(summary, results.get("extras", {})),
        "",
        "## The systems",
        "",
        "- **raw floor**: the client `XADD`s the payload to one Redis stream; two consumer "
        "processes `XREADGROUP` up to 16 entries, run the three writes (each autocommitted, "
        "psycopg), and `XACK` the batch. No ledger, no retries, no recovery.",
        "- **ledgerflow**: `ledgerflow worker --concurrency 2` processes (one on SQLite, two on "
        "PostgreSQL); the actions are database actions (READ COMMITTED): the write commits with "
        "the step's result record, exactly once, and every event and step is in the ledger. "
        f"Redis Streams: ledgerflow-redis with {STREAMS} streams.",
        "- **DBOS Transact**: two queue-worker processes, each its own executor running at "
        "most 10 workflows at once (the queue's `worker_concurrency`, connection pools as "
        "large; queue polled every 50 ms), a "
        "`DBOSClient` that enqueues; A, B and C run in sequence in the workflow. *Steps*: each "
        "action a `@DBOS.step` committing its own transaction (at least once); *datasource "
        "transactions*: a `SQLAlchemyDatasource` transaction at READ COMMITTED, output recorded "
        "in the same transaction (exactly once).",
        "- **Celery**: Redis broker and result backend, `task_acks_late`, prefetch multiplier 1, "
        "one worker node with the prefork pool at its default concurrency (2 here); "
        "`chord([A, B])(C)`; steps: a chain.",
        "- **Dramatiq**: Redis broker, `dramatiq --processes 2` (default threads), "
        "`group([A, B])` with C as its completion callback (`GroupCallbacks`); steps: a pipeline.",
        "",
        "Each peer is written for this suite the way its documentation recommends "
        "(`benchmarks/peer_*.py`) and runs in its own virtual environment, pinned in "
        "`benchmarks/peers-requirements.txt`. Every measurement gets fresh databases on a "
        "private PostgreSQL cluster and an emptied private Redis.",
        "",
        "Where ledgerflow's time goes (statements, transactions and Redis commands per workflow, "
        "and the workers' hottest functions): `python benchmarks/profile_ledgerflow.py "
        "--broker redis --py-spy` (`--steps` for the ten-step workflow, `--steps --unchecked` "
        "with its no-ops not checkpointed). What one statement "
        "costs the client through SQLAlchemy and through the store's direct path: "
        "`python benchmarks/statement_cost.py`.",
        "",
        "## Machine and versions",
        "",
        f"- machine: {m['nproc']} cores ({m['cpu']}), {m['memory']}, {m['platform']}; shared "
        f"with other work: 1-minute load average {results['load_average'][0]:.2f} at the start, "
        f"{results['load_average'][1]:.2f} at the end",
        f"- {m['python']}; ledgerflow {v['ledgerflow']}, ledgerflow-redis {v['ledgerflow-redis']}"
        f", SQLAlchemy {v['SQLAlchemy']}, psycopg {v['psycopg']}, redis-py {v['redis']}",
        "- peers: "
        + ", ".join(f"{name} {ver}" for name, ver in results.get("peer_versions", {}).items()),
        f"- PostgreSQL {pg['server_version']} (fsync={pg['fsync']}, synchronous_commit="
        f"{pg['synchronous_commit']}, shared_buffers={pg['shared_buffers']}); "
        f"{results['redis_server']}, no persistence",
        f"- command: `{results['command']}`, {results['total_seconds'] / 60:.0f} minutes",
        "",
    ]
    for title, key in (
        ("Enqueue latency and replay cost", "ledger_bench"),
        ("Independent steps run at the same time", "steps_bench"),
        ("Throughput with 1, 2 and 4 worker processes", "transport_bench"),
    ):
        text = results.get("extras", {}).get(key)
        if text:
            lines += [
                f"## {title}",
                "",
                f"From `benchmarks/{key}.py`:",
                "",
                "```text",
                text,
                "```",
                "",
            ]
    problems = [p for s in summary for p in s["problems"]]
    if problems:
        lines += ["## Failed checks", "", *(f"- {p}" for p in problems), ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------


def run_extra(
    script: str, args: Sequence[str], workdir: Path, *, json_out: bool = True
) -> tuple[str, Path]:
    """Run ``benchmarks/<script>`` with ``args`` (and ``--json``); its printed report and JSON."""
    out = workdir / f"{script}.json"
    done = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / script),
            *args,
            *(["--json", str(out)] if json_out else []),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    text = done.stdout.strip()
    if done.returncode:
        text += f"\n(exit status {done.returncode}: {done.stderr.strip()[-1000:]})"
    return text, out


@contextlib.contextmanager
def postgres(url: str | None) -> Iterator[str]:
    """The admin URL of ``url``'s server, or of a private cluster while the block runs."""
    if url:
        yield url
        return
    with PostgresServer() as server:
        yield server.admin_url


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="N = 200, 1 round: a smoke run")
    parser.add_argument("--rounds", type=int, help="rounds of every system (default 3; quick 1)")
    parser.add_argument("--workflows", type=int, help="N (default 2,000; quick 200)")
    parser.add_argument("--only", help="comma-separated keys: " + ", ".join(e.key for e in SYSTEMS))
    parser.add_argument("--no-extras", action="store_true", help="skip ledger and transport runs")
    parser.add_argument("--pg", metavar="URL", help="use this server, not a private cluster")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the Markdown page")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results here")
    parser.add_argument(
        "--from-json",
        type=Path,
        metavar="FILE",
        help="measure nothing: write the page again from a run's --json file",
    )
    args = parser.parse_args(argv)
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        args.output.write_text(render(saved, saved["summary"]))
        progress(f"wrote {args.output} from {args.from_json}")
        return 0
    quick: bool = args.quick
    rounds = args.rounds or (1 if quick else 3)
    workflows = args.workflows or (200 if quick else 2_000)
    sizes = workload.Sizes(
        workflows=workflows,
        warmup=20 if quick else 100,
        steps_workflows=max(workflows // 4, 10),
        timeout=300.0,
    )
    keys = args.only.split(",") if args.only else [e.key for e in SYSTEMS]
    unknown = set(keys) - {e.key for e in SYSTEMS}
    if unknown:
        parser.error(f"unknown system {', '.join(sorted(unknown))}")
    entries = [e for e in SYSTEMS if e.key in keys]
    signal.signal(signal.SIGTERM, _terminate)
    started = time.perf_counter()
    load_at_start = os.getloadavg()[0]
    peers = peers_python() if any(e.kind == "peer" for e in entries) else None
    results: dict[str, Any] = {
        "command": command_line(sys.argv),
        "machine": machine_info(),
        "versions": {
            "ledgerflow": ledgerflow.__version__,
            **{p: version(p) for p in ("ledgerflow-redis", "SQLAlchemy", "psycopg", "redis")},
        },
        "peer_versions": peer_versions(peers) if peers else {},
        "redis_server": subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, check=False
        ).stdout.split(" sha=")[0],
        "sizes": asdict(sizes),
        "rounds": rounds,
    }
    runs: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lf-compare-")))
        admin = stack.enter_context(postgres(args.pg))
        databases = Databases(admin, stack)
        results["postgresql"] = databases.server_info()
        redis_server = stack.enter_context(RedisServer())
        ctx = Context(sizes, databases, redis_server, workdir, peers)
        for round_no in range(1, rounds + 1):
            shift = (round_no - 1) % len(entries)
            for entry in [*entries[shift:], *entries[:shift]]:
                progress(f"round {round_no}/{rounds}: {entry.name}")
                run = measure(ctx, entry, round_no)
                run.update(key=entry.key, round=round_no)
                progress(
                    f"  {num(run.get('workflows_per_second'))} workflows/s, "
                    f"{num(run.get('steps_per_second'))} steps/s, "
                    f"{num(run.get('quick_steps_per_second'))} not checkpointed"
                    + (f"; PROBLEMS: {run['problems']}" if run.get("problems") else "")
                )
                runs.append(run)
        extras: dict[str, Any] = {}
        if not args.no_extras:
            quick_flag = ["--quick"] if quick else []
            progress("ledger benchmark: enqueue latency, replay cost")
            extras["ledger_bench"], ledger_json = run_extra(
                "ledger_bench.py", [*quick_flag, "--pg", admin], workdir
            )
            extras["replay"] = replay_ratio(ledger_json)
            progress("steps benchmark: independent steps against dependent ones")
            extras["steps_bench"], _ = run_extra("steps_bench.py", [], workdir, json_out=False)
            progress("transport benchmark: 1, 2 and 4 worker processes")
            extras["transport_bench"], _ = run_extra(
                "transport_bench.py", [*quick_flag, "--rounds", "1", "--pg", admin], workdir
            )
        results["extras"] = extras
        progress("cleaning up")
    results["total_seconds"] = time.perf_counter() - started
    results["load_average"] = [load_at_start, os.getloadavg()[0]]
    summary = summarise(runs, entries)
    print(table(HEADER, table_rows(summary)))
    for line in target_lines(summary, results["extras"]):
        print(line)
    args.output.write_text(render(results, summary))
    progress(f"wrote {args.output}")
    if args.json:
        results["runs"] = runs
        results["summary"] = summary
        args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 1 if any(s["problems"] for s in summary) else 0


if __name__ == "__main__":
    sys.exit(main())
