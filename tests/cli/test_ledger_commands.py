"""The ledger commands end to end, as a user runs them: real subprocesses on a real SQLite file
(and the same commands on PostgreSQL)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ledgerflow.store.sql import SQLStore
from support.cli import APP, EXAMPLE, Cli

INVOICE = json.dumps({"invoice": {"id": "INV-7", "total": 99.5, "customer_id": "C-7"}})


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(f"sqlite:///{tmp_path}/cli.db")


def test_the_whole_path_from_upgrade_to_history(cli: Cli) -> None:
    assert cli.json("db", "upgrade") == {"revision": "0006"}
    assert cli("workflow", "register", str(EXAMPLE)).stdout.startswith(
        "registered InvoiceApproval v1"
    )
    assert [d["version"] for d in cli.json("workflow", "list")] == [1]
    execution_id = cli(
        "start", "InvoiceApproval", "--tenant", "acme", "--context", '{"approval_limit": 500}'
    ).stdout.strip()
    event_id = cli.json(
        "send",
        execution_id,
        "CreateInvoice",
        "--tenant",
        "acme",
        "--role",
        "clerk",
        "--payload",
        INVOICE,
    )["event_id"]
    again = cli(
        "send",
        execution_id,
        "CreateInvoice",
        "--tenant",
        "acme",
        "--role",
        "clerk",
        "--payload",
        INVOICE,
        "--key",
        "k1",
    )
    repeat = cli(
        "send",
        execution_id,
        "CreateInvoice",
        "--tenant",
        "acme",
        "--role",
        "clerk",
        "--payload",
        INVOICE,
        "--key",
        "k1",
    )
    assert again.stdout == repeat.stdout
    assert cli.json("event", "status", event_id, "--tenant", "acme")["status"] == "pending"
    summary = cli.json(*APP, "worker", "--until-idle", "--poll-interval", "0.05")
    assert summary["events"] == 2
    shown = cli.json("execution", "show", execution_id, "--tenant", "acme")
    assert (shown["state"], shown["status"], shown["context"]["approval_limit"]) == (
        "pending_approval",
        "active",
        500,
    )
    history = cli.json("execution", "history", execution_id, "--tenant", "acme")
    assert [h["kind"] for h in history][:3] == [
        "execution_started",
        "event_received",
        "event_received",
    ]
    assert history[2]["outcome"] == "no_transition"
    text = cli("execution", "history", execution_id, "--tenant", "acme").stdout
    assert "transition_applied  draft -> pending_approval (submit)" in text
    status = cli("event", "status", event_id, "--tenant", "acme").stdout
    assert status.startswith(f"CreateInvoice #2 of {execution_id}: processed")


def test_commands_refuse_a_database_without_the_schema(cli: Cli) -> None:
    result = cli("workflow", "list", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().endswith("run `ledgerflow db upgrade`")


@pytest.fixture
def ready(cli: Cli) -> tuple[Cli, str]:
    cli("db", "upgrade")
    cli("workflow", "register", str(EXAMPLE))
    return cli, cli("start", "InvoiceApproval", "--tenant", "acme").stdout.strip()


BAD: list[tuple[str, list[str], str]] = [
    (
        "malformed payload JSON",
        ["send", "{x}", "CreateInvoice", "--tenant", "acme", "--payload", "{not json"],
        "--payload is not valid JSON",
    ),
    (
        "payload not an object",
        ["send", "{x}", "CreateInvoice", "--tenant", "acme", "--payload", "[1]"],
        "--payload must be a JSON object",
    ),
    (
        "malformed context",
        ["start", "InvoiceApproval", "--tenant", "acme", "--context", "{"],
        "--context is not valid JSON",
    ),
    ("unknown workflow", ["start", "Nope", "--tenant", "acme"], "no workflow named 'Nope'"),
    (
        "bad version",
        ["start", "InvoiceApproval", "--tenant", "acme", "--version", "two"],
        "--version must be a number",
    ),
    (
        "unknown event",
        ["send", "{x}", "PayInvoice", "--tenant", "acme"],
        "has no event 'PayInvoice'",
    ),
    (
        "invalid payload",
        ["send", "{x}", "CreateInvoice", "--tenant", "acme", "--payload", "{}"],
        "'invoice' is a required property",
    ),
    (
        "other tenant",
        ["send", "{x}", "CreateInvoice", "--tenant", "globex", "--payload", INVOICE],
        "not found",
    ),
    ("other tenant's execution", ["execution", "show", "{x}", "--tenant", "globex"], "not found"),
    (
        "unknown app",
        ["--app", "no_such_module_here", "workflow", "list"],
        "--app no_such_module_here: cannot import it",
    ),
    ("invalid definition", ["workflow", "register", "{bad}"], "unknown target state"),
]


@pytest.mark.parametrize(("args", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    ready: tuple[Cli, str], tmp_path: Path, args: list[str], message: str
) -> None:
    cli, execution_id = ready
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.read_text().replace("to: approved", "to: approvedd", 1))
    store = SQLStore(cli.db)
    before = store.row_counts()
    argv = [a.replace("{x}", execution_id).replace("{bad}", str(bad)) for a in args]
    result = cli(*argv, check=False)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: ")
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert store.row_counts() == before
    store.close()


def test_actions_lists_the_built_in_actions_with_schemas(cli: Cli) -> None:
    described = cli.json("actions")
    names = [a["name"] for a in described]
    assert names == sorted(names)
    assert {"ledgerflow.notify", "ledgerflow.record"} <= set(names)
    notify = next(a for a in described if a["name"] == "ledgerflow.notify")
    assert notify["parameters"]["required"] == ["channel", "message"]


def test_the_cli_works_on_postgresql(pg_url: str) -> None:
    cli = Cli(pg_url)
    cli("workflow", "register", str(EXAMPLE))
    execution_id = cli("start", "InvoiceApproval", "--tenant", "pg").stdout.strip()
    cli(
        "send",
        execution_id,
        "CreateInvoice",
        "--tenant",
        "pg",
        "--role",
        "clerk",
        "--payload",
        INVOICE,
    )
    assert cli.json(*APP, "worker", "--until-idle", "--poll-interval", "0.05")["events"] >= 1
    assert (
        cli.json("execution", "show", execution_id, "--tenant", "pg")["state"] == "pending_approval"
    )


def test_a_failed_execution_is_retried_from_the_command_line(cli: Cli) -> None:
    cli("db", "upgrade")  # without the app: its tables are missing, so the first step fails
    cli("workflow", "register", str(EXAMPLE))
    execution_id = cli("start", "InvoiceApproval", "--tenant", "acme").stdout.strip()
    cli(
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
    cli("worker", "--until-idle", "--poll-interval", "0.05")
    shown = cli.json("execution", "show", execution_id, "--tenant", "acme")
    assert (shown["state"], shown["status"]) == ("pending_approval", "failed")
    text = cli("execution", "history", execution_id, "--tenant", "acme").stdout
    assert "no table 'invoices'" in text

    cli(*APP, "db", "upgrade")  # the app's setup creates its tables once the schema is there
    queued = cli.json("execution", "retry", execution_id, "--tenant", "acme", "--by", "ops")
    again = cli.json("execution", "retry", execution_id, "--tenant", "acme")
    assert again == queued
    cli(*APP, "worker", "--until-idle", "--poll-interval", "0.05")
    shown = cli.json("execution", "show", execution_id, "--tenant", "acme")
    assert (shown["state"], shown["status"]) == ("pending_approval", "active")
    text = cli("execution", "history", execution_id, "--tenant", "acme").stdout
    assert "execution_resumed" in text
    assert "retrying event 2 by ops" in text
    status = cli.json("event", "status", queued["event_id"], "--tenant", "acme")
    assert (status["status"], status["outcome"]) == ("processed", "retried")

    refused = cli("execution", "retry", execution_id, "--tenant", "acme", check=False)
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        f"error: execution {execution_id} is active, not failed: nothing to retry"
    )
    missing = cli("execution", "retry", execution_id, "--tenant", "globex", check=False)
    assert missing.returncode == 2
    assert "not found" in missing.stderr
