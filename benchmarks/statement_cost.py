"""What one statement costs the client: SQLAlchemy's execution against ledgerflow's direct path.

    python benchmarks/statement_cost.py [--pg URL] [--calls N]

Runs a statement of 2 parameters and one of 150 (about the size of an event's commit of a
dozen records) ``--calls`` times each, in one read transaction on PostgreSQL, through
``Connection.execute`` and through :func:`ledgerflow.store.direct.run`, and prints the client
CPU per call (``time.process_time``) and the ratio. The server's work is the same both ways;
only the client's differs. Nothing is written.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa

from ledgerflow.store import direct
from ledgerflow.store.sql import SQLStore

SMALL = sa.text("SELECT CAST(:a AS INTEGER) + CAST(:b AS INTEGER)")
LARGE = sa.text(
    "SELECT count(*) FROM pg_class WHERE relname IN ("
    + ", ".join(f"CAST(:p{n} AS VARCHAR)" for n in range(150))
    + ")"
)
STATEMENTS: list[tuple[str, Any, dict[str, Any]]] = [
    ("2 parameters", SMALL, {"a": 1, "b": 2}),
    ("150 parameters", LARGE, {f"p{n}": f"relation_{n}" for n in range(150)}),
]


def cpu_per_call(call: Callable[[], Any], calls: int) -> float:
    """Microseconds of this process's CPU per call, after a warm-up."""
    for _ in range(min(calls, 200)):
        call()
    began = time.process_time()
    for _ in range(calls):
        call()
    return (time.process_time() - began) / calls * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args(argv)
    store = SQLStore(args.pg)
    try:
        with store.read() as conn:
            print(f"client CPU per call (us), {args.calls:,} calls each, {args.pg}")
            print(f"  {'statement':<16}{'SQLAlchemy':>12}{'direct':>10}{'ratio':>8}")
            for name, statement, params in STATEMENTS:
                through = cpu_per_call(
                    lambda s=statement, p=params: conn.execute(s, p).all(), args.calls
                )
                ours = cpu_per_call(
                    lambda s=statement, p=params: direct.run(conn, s, p).all(), args.calls
                )
                print(f"  {name:<16}{through:>12.1f}{ours:>10.1f}{ours / through:>7.2f}x")
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
