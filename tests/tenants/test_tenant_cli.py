"""Every command that takes ``--tenant`` answers "not found" for another tenant's execution or
event, exits 2 with one line, and changes nothing; a command added later with a ``--tenant``
option fails here until it has a case."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import click
import pytest

from ledgerflow.cli import cli as ledgerflow_cli
from ledgerflow.store.sql import SQLStore
from support.cli import APP, EXAMPLE, Cli

INVOICE = json.dumps({"invoice": {"id": "INV-7", "total": 99.5, "customer_id": "C-7"}})

# the command path (as typed) -> its arguments for another tenant's execution {x} or event {e}
CROSS_TENANT: dict[str, list[str]] = {
    "send": ["send", "{x}", "CreateInvoice", "--payload", INVOICE],
    "execution show": ["execution", "show", "{x}"],
    "execution history": ["execution", "history", "{x}"],
    "execution retry": ["execution", "retry", "{x}"],
    "execution timers": ["execution", "timers", "{x}"],
    "event status": ["event", "status", "{e}"],
    "workflow migrate": [
        "workflow",
        "migrate",
        "InvoiceApproval",
        "--from",
        "1",
        "--to",
        "2",
        "--execution",
        "{x}",
    ],
}
# commands that report per execution instead of failing with one line
REPORTS = {"workflow migrate"}
# commands whose --tenant names the tenant to create under, not one to look in
CREATES = {"start"}


def _tenant_commands(group: click.Group, prefix: str = "") -> Iterator[str]:
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            yield from _tenant_commands(command, path + " ")
        elif any(p.name == "tenant" for p in command.params):
            yield path


def test_every_command_with_a_tenant_is_listed() -> None:
    missing = set(_tenant_commands(ledgerflow_cli)) - set(CROSS_TENANT) - CREATES
    assert not missing, f"add a cross-tenant case for {sorted(missing)}"


def run(db: str, *args: str) -> subprocess.CompletedProcess[str]:
    return Cli(db)(*APP, *args, check=False)


@pytest.fixture(scope="module")
def ready(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """A SQLite ledger with one acme execution (and its event), and a second version of the
    workflow to migrate to."""
    folder = tmp_path_factory.mktemp("tenants")
    db = f"sqlite:///{folder}/cli.db"
    assert run(db, "db", "upgrade").returncode == 0
    second = folder / "v2.yaml"
    second.write_text(EXAMPLE.read_text().replace("\nversion: 1\n", "\nversion: 2\n", 1))
    assert run(db, "workflow", "register", str(second)).returncode == 0
    started = run(db, "start", "InvoiceApproval", "--version", "1", "--tenant", "acme")
    assert started.returncode == 0, started.stderr
    execution_id = started.stdout.strip()
    sent = run(
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
        "--json",
    )
    assert sent.returncode == 0, sent.stderr
    return db, execution_id, json.loads(sent.stdout)["event_id"]


@pytest.mark.parametrize("command", sorted(CROSS_TENANT))
def test_another_tenants_execution_is_not_found(ready: tuple[str, str, str], command: str) -> None:
    db, execution_id, event_id = ready
    store = SQLStore(db)
    before = store.row_counts()
    args = [a.replace("{x}", execution_id).replace("{e}", event_id) for a in CROSS_TENANT[command]]
    result = run(db, *args, "--tenant", "globex")
    after = store.row_counts()
    store.close()
    outcome: Any = (result.returncode, result.stdout, result.stderr)
    assert result.returncode != 0, outcome
    if command in REPORTS:
        # a migration reports on each execution it was given, on standard output
        assert f"execution {execution_id} not found" in result.stdout, outcome
    else:
        assert "not found" in result.stderr, outcome
        assert result.stderr.count("\n") == 1, outcome
    assert after == before
