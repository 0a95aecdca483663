"""Measure what a noisy tenant costs a quiet one, with and without a per-tenant limit.

The scenario: tenant ``noisy`` has ``--backlog`` executions of the InvoiceApproval example, each
with a ``CreateInvoice`` event waiting (the submission runs two steps: a row inserted, a
notification); then tenant ``quiet`` enqueues one ``CreateInvoice``. One worker process-worth of
threads (``Worker(concurrency=2)``, in this process, on an SQLite file) drains everything. For
each configuration (no limit; ``tenant_limit=1``) the benchmark reports:

- the **quiet wait**: from the worker's start (everything was committed before it) to the
  quiet event's processing, in seconds;
- the **drain time**: from the worker's start until every event is processed;
- their **ratio**: the fraction of the drain the quiet tenant waited. Without a limit the
  wake-ups are taken in commit order, so the quiet event waits for nearly the whole backlog
  (a ratio near 1); with a limit they are taken round-robin across tenants, so it waits for
  about one noisy event (a ratio near 0): its fair share.

Every event is checked processed and every execution's projection equal to its replayed ledger;
the exit status is 1 otherwise. Nothing is asserted about times: each figure is one run's
measurement on a shared machine.

Reproduce, from the repository root::

    . .venv/bin/activate
    python benchmarks/tenant_fairness.py              # 1,000 noisy events
    python benchmarks/tenant_fairness.py --backlog 200
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "contrib/examples/invoice_approval"))

import invoice_app

from ledgerflow.engine import Engine
from ledgerflow.worker import Worker

INVOICE = {"id": "INV", "total": 120.0, "customer_id": "C-1", "currency": "EUR"}


def scenario(backlog: int, tenant_limit: int | None) -> dict[str, Any]:
    """One run: the backlog, then the quiet event, then a worker until idle."""
    with tempfile.TemporaryDirectory(prefix="ledgerflow-fairness-") as tmp:
        engine = Engine(f"sqlite:///{tmp}/fair.db")
        try:
            engine.store.upgrade()
            invoice_app.setup(engine)
            noisy = [
                engine.create_execution("InvoiceApproval", tenant="noisy") for _ in range(backlog)
            ]
            for i, x in enumerate(noisy):
                engine.enqueue_event(
                    x,
                    "CreateInvoice",
                    tenant="noisy",
                    role="clerk",
                    payload={"invoice": {**INVOICE, "id": f"N-{i}"}},
                )
            quiet = engine.create_execution("InvoiceApproval", tenant="quiet")
            event_id = engine.enqueue_event(
                quiet,
                "CreateInvoice",
                tenant="quiet",
                role="clerk",
                payload={"invoice": {**INVOICE, "id": "Q-1"}},
            )
            started = time.time()
            Worker(engine, concurrency=2, poll_interval=0.02, tenant_limit=tenant_limit).run(
                until_idle=True
            )
            drained = time.time() - started
            entry = next(e for e in engine.history(quiet, tenant="quiet") if e.event_id == event_id)
            problems = []
            if entry.status != "processed" or entry.processed_at is None:
                problems.append(f"the quiet event ended {entry.status}")
            for x, tenant in [*((n, "noisy") for n in noisy), (quiet, "quiet")]:
                found = engine.get_execution(x, tenant=tenant)
                replayed = engine.replay(x, tenant=tenant)
                if (found.state, dict(found.context)) != (replayed.name, dict(replayed.context)):
                    problems.append(f"{x}: projection differs from replay")
                if found.state != "pending_approval":
                    problems.append(f"{x}: ended in {found.state}")
            wait = (entry.processed_at or started) - started
        finally:
            engine.close()
    return {
        "tenant_limit": tenant_limit,
        "backlog": backlog,
        "quiet_wait_s": round(wait, 3),
        "drain_s": round(drained, 3),
        "wait_over_drain": round(wait / drained, 3) if drained else None,
        "problems": problems,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backlog", type=int, default=1000, help="the noisy tenant's events")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = [scenario(args.backlog, None), scenario(args.backlog, 1)]
    print(f"noisy backlog: {args.backlog} events; 1 quiet event enqueued after it")
    print(f"{'tenant limit':>12}  {'quiet wait s':>12}  {'drain s':>8}  {'wait/drain':>10}")
    for r in results:
        limit = "none" if r["tenant_limit"] is None else str(r["tenant_limit"])
        print(
            f"{limit:>12}  {r['quiet_wait_s']:>12.3f}  {r['drain_s']:>8.3f}  "
            f"{r['wait_over_drain']:>10.3f}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    failed = [p for r in results for p in r["problems"]]
    for problem in failed[:20]:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
