"""``ledgerflow execution timers``: an execution's timers, as a user lists them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "contrib" / "examples" / "invoice_approval"
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(EXAMPLE), *filter(None, [os.environ.get("PYTHONPATH")])]),
}
INVOICE = json.dumps({"invoice": {"id": "INV-9", "total": 10, "customer_id": "C-9"}})


def run(db: str, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "ledgerflow", "--db", db, "--app", "invoice_app", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=ENV,
    )
    assert result.returncode == 0, result.stderr
    return result


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
