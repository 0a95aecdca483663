"""``ledgerflow workflow diff`` and ``ledgerflow workflow migrate``, run as real subprocesses on
an SQLite file and on PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from versioning.parcel_workflows import V1_TO_V2, write_versions


class Cli:
    def __init__(self, db: str) -> None:
        self.db = db

    def __call__(self, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "ledgerflow", "--db", self.db, *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == code, (result.stdout, result.stderr)
        return result

    def json(self, *args: str, code: int = 0) -> Any:
        return json.loads(self(*args, "--json", code=code).stdout)


@pytest.fixture
def cli(db_url: str, tmp_path: Path) -> Cli:
    """The command on ``db_url`` with Parcel v1 and v2 registered."""
    run = Cli(db_url)
    run("workflow", "register", *map(str, write_versions(tmp_path)))
    return run


def start(cli: Cli, tenant: str, *events: tuple[str, str]) -> str:
    """A v1 execution of ``tenant`` that was sent ``events`` (name, JSON payload) and
    processed."""
    x = cli("start", "Parcel", "--tenant", tenant, "--version", "1").stdout.strip()
    for name, payload in events:
        cli("send", x, name, "--tenant", tenant, "--payload", payload)
    cli("worker", "--until-idle", "--poll-interval", "0.05")
    return x


def test_diff_prints_the_changes_or_one_json_document(cli: Cli) -> None:
    assert cli("workflow", "diff", "Parcel", "1", "2").stdout == V1_TO_V2 + "\n"
    found = cli.json("workflow", "diff", "Parcel", "1", "2")
    assert (found["workflow"], found["old_version"], found["new_version"]) == ("Parcel", 1, 2)
    assert [s["name"] for s in found["states"]] == ["held", "returned"]
    missing = cli("workflow", "diff", "Parcel", "1", "9", code=2)
    assert missing.stderr == "error: workflow 'Parcel' has no version 9\n"
    assert missing.stdout == ""


def test_migrate_dry_run_then_migrate(cli: Cli) -> None:
    packed = start(cli, "acme", ("Pack", '{"weight": 10}'))
    held = start(cli, "acme", ("Pack", '{"weight": 10}'), ("Hold", "{}"))
    theirs = start(cli, "globex", ("Pack", '{"weight": 10}'))

    dry = cli(
        "workflow", "migrate", "Parcel", "--from", "1", "--to", "2", "--all", "--tenant", "acme",
        "--dry-run", code=1,
    )  # fmt: skip
    lines = dry.stdout.splitlines()
    assert lines[0] == (
        "dry run of Parcel v1 -> v2, nothing written: 2 execution(s), 1 would be migrated, "
        "1 refused, 1 diverge when replayed under v2"
    )
    assert lines[1] == f"would migrate {packed} (tenant acme) in packed"
    assert lines[2] == (
        f"refused {held} (tenant acme): state_missing: state 'held' does not exist in Parcel v2"
    )
    assert lines[3].startswith("    diverges at seq 3 (Hold): rejected: v1 applied it")
    assert "replaying Parcel v1 -> v2: 2/2" in dry.stderr  # the progress, away from stdout
    shown = cli.json("execution", "show", packed, "--tenant", "acme")
    assert shown["version"] == 1

    report = cli.json(
        "workflow", "migrate", "Parcel", "--from", "1", "--to", "2", "--all", "--dry-run",
        code=1,
    )  # fmt: skip
    assert (report["dry_run"], report["migrated"], report["refused"]) == (True, 2, 1)
    assert {e["execution_id"] for e in report["executions"]} == {packed, held, theirs}

    done = cli(
        "workflow", "migrate", "Parcel", "--from", "1", "--to", "2", "--execution", packed,
        "--tenant", "acme", "--by", "ops",
    )  # fmt: skip
    assert done.stdout.splitlines() == [
        "Parcel v1 -> v2: 1 migrated, 0 refused",
        f"migrated {packed} (tenant acme) in packed at seq 5",
    ]
    assert cli.json("execution", "show", packed, "--tenant", "acme")["version"] == 2
    history = cli("execution", "history", packed, "--tenant", "acme").stdout
    assert "   5  execution_migrated  v1 -> v2 in packed by ops" in history
    cli("send", packed, "Ship", "--tenant", "acme", "--role", "courier")
    cli("worker", "--until-idle", "--poll-interval", "0.05")
    assert cli.json("execution", "show", packed, "--tenant", "acme")["state"] == "shipped"


def test_migrate_refusals_and_bad_input(cli: Cli) -> None:
    theirs = start(cli, "globex", ("Pack", '{"weight": 10}'))
    base = ("workflow", "migrate", "Parcel", "--from", "1", "--to", "2")
    refused = cli(*base, "--execution", theirs, "--tenant", "acme", code=1)
    assert refused.stdout.splitlines()[1] == (
        f"refused {theirs} (tenant acme): not_found: execution {theirs} not found"
    )
    found = cli.json(*base, "--execution", theirs, "--tenant", "acme", code=1)
    assert found["executions"][0]["refusal"] == "not_found"
    for args, message in [
        (("--execution", theirs), "--execution needs --tenant"),
        ((), "choose the executions: --execution ID (repeatable) or --all"),
        (("--all", "--execution", theirs, "--tenant", "globex"), "choose the executions"),
    ]:
        result = cli(*base, *args, code=2)
        assert result.stderr.startswith(f"error: {message}")
        assert result.stderr.count("\n") == 1
    down = cli("workflow", "migrate", "Parcel", "--from", "2", "--to", "1", "--all", code=2)
    assert down.stderr == (
        "error: cannot migrate Parcel from v2 to v1: executions only move to a newer version\n"
    )
    assert cli.json("execution", "show", theirs, "--tenant", "globex")["version"] == 1
