"""Where ledgerflow's time goes under the reference workload: statements, transactions and Redis
commands per workflow, and (with ``--py-spy``) the workers' hottest functions.

Runs one ledgerflow configuration (``--broker database`` or ``redis``) of :mod:`workload` on a
private PostgreSQL cluster with ``pg_stat_statements`` and a private Redis: workers started,
a warm-up, then the counters reset and N invoice workflows submitted and run (or, with
``--steps``, N ten-step workflows; with ``--unchecked`` too, their no-ops registered with
``checkpoint=False``). It prints, per workflow: the statements PostgreSQL ran
(by statement, with their calls and time), the transactions committed, the Redis commands;
and the client's share (from the client's own connection) apart from the workers'. With
``--py-spy`` each worker is sampled while it works (``py-spy record --gil``: only samples
that hold the GIL, i.e. the workers' own Python CPU time, not their waits; py-spy must be
installed: ``pip install py-spy``) and the functions with the most samples, own and
cumulative, are listed.

    python benchmarks/profile_ledgerflow.py --broker redis --workflows 1000 --py-spy
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import psycopg
import sqlalchemy as sa

import workload
from ledgerflow_app import LedgerflowSystem
from ledgerflow_redis.testing import RedisServer
from reporting import num, table
from servers import Databases, PostgresServer


def statements(admin_url: str, database: str, per: int) -> tuple[list[list[str]], float, float]:
    """pg_stat_statements of ``database``: rows of the table, total calls and time per
    workflow."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT s.calls, s.total_exec_time, s.rows, s.query FROM pg_stat_statements s "
            "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s "
            "ORDER BY s.calls DESC",
            (database,),
        ).fetchall()
    out = []
    calls = time_ms = 0.0
    for n, ms, _, query in rows:
        calls += n
        time_ms += ms
        text = " ".join(str(query).split())
        out.append([text[:110], num(n / per), num(ms / per)])
    return out, calls / per, time_ms / per


def commits(admin_url: str, database: str) -> int:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (database,)
        ).fetchone()
    return int(row[0]) if row else 0


def cpu_seconds(pids: Sequence[int]) -> float:
    """User and system CPU time the processes ``pids`` have used so far, in seconds (Linux)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def backends(database: str) -> list[int]:
    """The PostgreSQL server processes serving ``database`` (their titles name it)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                title = (
                    (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                )
                if title.startswith("postgres:") and f" {database} " in title:
                    found.append(int(proc.name))
    return found


def reset(admin_url: str, redis_server: RedisServer) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute("SELECT pg_stat_statements_reset()")
    with redis_server.client() as client:
        client.config_resetstat()


def redis_commands(redis_server: RedisServer, per: int) -> list[list[str]]:
    with redis_server.client() as client:
        stats = client.info("commandstats")
    rows = sorted(
        ((name.removeprefix("cmdstat_"), value["calls"]) for name, value in stats.items()),
        key=lambda item: -item[1],
    )
    return [[name, num(calls / per)] for name, calls in rows]


def hottest(raw: Path, top: int) -> tuple[list[list[str]], list[list[str]]]:
    """The functions with the most samples in a ``py-spy --format raw`` file (collapsed
    stacks): own samples and cumulative (anywhere on the stack)."""
    own: collections.Counter[str] = collections.Counter()
    cumulative: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [
            f.split(" (")[0] + " " + f.rsplit("/", 1)[-1].rstrip(")") for f in stack.split(";")
        ]
        own[frames[-1]] += n
        for frame in set(frames):
            cumulative[frame] += n
    if not total:
        return [], []

    def rows(counter: collections.Counter[str]) -> list[list[str]]:
        return [[name[:100], f"{100 * n / total:.1f}%"] for name, n in counter.most_common(top)]

    return rows(own), rows(cumulative)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--broker", choices=("database", "redis"), default="redis")
    parser.add_argument("--workflows", type=int, default=1000)
    parser.add_argument("--steps", action="store_true", help="ten-step workflows instead")
    parser.add_argument(
        "--unchecked",
        action="store_true",
        help="with --steps: the no-ops registered with checkpoint=False",
    )
    parser.add_argument("--py-spy", action="store_true", help="sample the workers with py-spy")
    parser.add_argument(
        "--backlog",
        action="store_true",
        help="submit every workflow first, then start the workers: their capacity alone, "
        "without the client's pace",
    )
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    if args.unchecked and not args.steps:
        parser.error("--unchecked is for the ten-step workflows: give --steps too")
    if args.backlog and args.py_spy:
        parser.error("--backlog restarts the workers: sample them with py-spy without it")
    n: int = args.workflows
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(PostgresServer())
        redis_server = stack.enter_context(RedisServer())
        databases = Databases(pg.admin_url, stack)
        name = databases.create("profile")
        url = databases.url(name)
        broker = redis_server.url(streams=4) if args.broker == "redis" else "database"
        system = LedgerflowSystem(f"ledgerflow, {args.broker}", url, broker, 2, effects_url=url)
        logdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        workers = workload.Workers()
        stack.callback(workers.stop)
        engine = sa.create_engine(url)
        stack.callback(engine.dispose)

        def finished(prefix: str, count: int) -> bool:
            with engine.connect() as conn:
                if args.steps:
                    return workload.steps_done(conn, prefix)[0] >= count
                return workload.count_c(conn, prefix) >= count

        def submit(prefix: str, count: int) -> None:
            for i in range(count):
                workflow = f"{prefix}{i:06d}"
                if args.steps and args.unchecked:
                    system.submit_quick_steps(workflow)
                elif args.steps:
                    system.submit_steps(workflow)
                else:
                    system.submit(workflow, workload.payload(workflow, i))

        workers.start(system.worker_commands(), system.worker_env(), logdir)
        submit("warm-", 50)
        workload.wait_until(lambda: finished("warm-", 50), 120, workers, "warm-up")
        time.sleep(1)
        reset(pg.admin_url, redis_server)
        commits_before = commits(pg.admin_url, name)
        spies: list[subprocess.Popen[bytes]] = []
        if args.py_spy:
            py_spy = shutil.which("py-spy")
            if py_spy is None:
                parser.error("py-spy is not installed")
            for k, proc in enumerate(workers.processes):
                spies.append(
                    subprocess.Popen(
                        [
                            py_spy,
                            "record",
                            "--pid",
                            str(proc.pid),
                            "--format",
                            "raw",
                            "--gil",
                            "--rate",
                            "200",
                            "--output",
                            str(logdir / f"spy-{k}.txt"),
                            "--nonblocking",
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
            time.sleep(1)
        if args.backlog:
            workers.stop()
            started = time.time()
            submit("wf-", n)
            submitted = time.time() - started
            workers = workload.Workers()
            stack.callback(workers.stop)
            started = time.time()
            workers.start(system.worker_commands(), system.worker_env(), logdir)
            worker_cpu, server_cpu = 0.0, cpu_seconds(backends(name))
        else:
            worker_cpu = cpu_seconds([p.pid for p in workers.processes])
            server_cpu = cpu_seconds(backends(name))
            started = time.time()
            submit("wf-", n)
            submitted = time.time() - started
        workload.wait_until(lambda: finished("wf-", n), 600, workers, "run")
        elapsed = time.time() - started
        worker_cpu = cpu_seconds([p.pid for p in workers.processes]) - worker_cpu
        server_cpu = cpu_seconds(backends(name)) - server_cpu
        for spy in spies:
            spy.send_signal(2)  # SIGINT: py-spy writes its file and exits
        for spy in spies:
            spy.wait(timeout=60)
        per_commit = (commits(pg.admin_url, name) - commits_before) / n
        rows, calls, ms = statements(pg.admin_url, name, n)
        what = "ten-step workflows" if args.steps else "invoice workflows"
        pace = "from the workers' start (all submitted first)" if args.backlog else "end to end"
        print(
            f"{n} {what} on ledgerflow with the {args.broker} transport, 2 workers: "
            f"{num(n / elapsed)} workflows/s {pace}; submitting took {num(submitted)} s"
        )
        print(
            f"CPU per workflow: workers {num(1000 * worker_cpu / n)} ms, PostgreSQL backends "
            f"{num(1000 * server_cpu / n)} ms (with --backlog the workers' start-up included; "
            "the backends that served the client, none)"
        )
        print(
            f"per workflow: {num(calls)} statements, {num(ms)} ms of statement time, "
            f"{num(per_commit)} transactions committed (client and workers)\n"
        )
        print(table(["statement", "calls/workflow", "ms/workflow"], rows[: args.top]))
        if args.broker == "redis":
            print("\nRedis commands per workflow")
            print(table(["command", "calls/workflow"], redis_commands(redis_server, n)))
        for k in range(len(spies)):
            own, cumulative = hottest(logdir / f"spy-{k}.txt", args.top)
            print(f"\nworker {k}: most samples, own")
            print(table(["function", "share"], own))
            print(f"\nworker {k}: most samples, cumulative")
            print(table(["function", "share"], cumulative))
            break  # the workers do the same work: one is enough
        system.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
