"""``ledgerflow execution timers``: an execution's timers, as a user lists them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from support.cli import APP, Cli

INVOICE = json.dumps({"invoice": {"id": "INV-9", "total": 10, "customer_id": "C-9"}})


def run(db: str, *args: str) -> subprocess.CompletedProcess[str]:
    return Cli(db)(*APP, *args)


def test_an_execution_lists_its_armed_escalation_timer(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/timers.db"
    run(db, "db", "upgrade")
    execution_id = run(db, "start", "InvoiceApproval", "--tenant", "acme").stdout.strip()
    assert (
        "has no timers" in run(db, "execution", "timers", execution_id, "--tenant", "acme").stdout
    )
    run(
        db,
        "send",
        execution_id,
        "CreateInvoice",
        "--tenant",
        "acme",
        "--role",
        "clerk",
        "--payload",
        INVOICE,
    )
    run(db, "worker", "--until-idle", "--poll-interval", "0.05")
    (timer,) = json.loads(
        run(db, "execution", "timers", execution_id, "--tenant", "acme", "--json").stdout
    )
    assert (timer["event"], timer["kind"], timer["state"]) == ("EscalationDue", "state", "armed")
    assert timer["fired_at"] is None
    assert timer["payload"] is None
    text = run(db, "execution", "timers", execution_id, "--tenant", "acme").stdout
    assert text.split()[:3] == ["EscalationDue", "state", "armed"]
