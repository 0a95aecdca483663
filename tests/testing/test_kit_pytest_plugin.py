"""The pytest plugin: its fixtures here, and a user's test suite run by pytest in a
subprocess on SQLite in memory, SQLite files and PostgreSQL (``--ledgerflow-db``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from ledgerflow.engine import Engine
from ledgerflow.testing import Harness

CONFTEST = '''
import pytest

import ledgerflow
from ledgerflow.registry import ActionRegistry

WORKFLOW = """
name: Door
version: 1
initial_state: closed
states: [closed, open, gone]
terminal_states: [gone]
transitions:
  - {from: closed, to: open, on: Open, steps: [{id: creak, action: creak}]}
  - {from: open, to: closed, on: Close}
  - {from: "*", to: gone, on: Remove}
"""


@pytest.fixture
def ledgerflow_definitions():
    return [ledgerflow.loads(WORKFLOW, "yaml")]


@pytest.fixture
def ledgerflow_actions():
    registry = ActionRegistry()
    registry.register_simple_action("creak", "Creak.", [], lambda params, ctx: "creak")
    return registry
'''

TESTS = """
def test_the_door_opens(ledgerflow_harness, ledgerflow_db_url):
    x = ledgerflow_harness.start()
    ledgerflow_harness.send(x, "Open")
    assert ledgerflow_harness.execution(x).state == "open"
    assert [c.result for c in ledgerflow_harness.calls] == ["creak"]
    print("URL", ledgerflow_db_url)


def test_each_test_has_a_store_of_its_own(ledgerflow_engine):
    assert ledgerflow_engine.list_definitions()[0]["name"] == "Door"
    assert ledgerflow_engine.store.row_counts()["lf_executions"] == 0
"""


def run_suite(tmp_path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    (suite / "test_door.py").write_text(textwrap.dedent(TESTS))
    (suite / "test_door_again.py").write_text(textwrap.dedent(TESTS))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-s",
            "-p",
            "no:cacheprovider",
            str(suite),
            *options,
        ],
        capture_output=True,
        text=True,
        cwd=suite,
        timeout=120,
    )


def test_the_fixtures_give_a_harness_and_its_engine(
    ledgerflow_harness: Harness, ledgerflow_engine: Engine, ledgerflow_db_url: str
) -> None:
    assert ledgerflow_engine is ledgerflow_harness.engine
    assert ledgerflow_db_url == "sqlite://"
    assert ledgerflow_harness.store.in_memory


def test_a_users_suite_runs_in_memory_by_default(tmp_path: Path) -> None:
    done = run_suite(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 passed" in done.stdout
    assert "URL sqlite://" in done.stdout


def test_the_same_suite_runs_on_sqlite_files(tmp_path: Path) -> None:
    done = run_suite(tmp_path, "--ledgerflow-db", "sqlite:///ignored.db")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 passed" in done.stdout
    assert "ledgerflow.db" in done.stdout
    assert not (tmp_path / "suite" / "ignored.db").exists()


def test_the_same_suite_runs_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    done = run_suite(tmp_path, "--ledgerflow-db", pg_url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 passed" in done.stdout
    assert "search_path" in done.stdout  # a schema of its own per test


def test_a_url_no_store_plugin_serves_fails_each_test_saying_so(tmp_path: Path) -> None:
    done = run_suite(tmp_path, "--ledgerflow-db", "mysql://somewhere/db")
    assert done.returncode != 0
    assert "no store for URLs of scheme 'mysql'" in done.stdout


def test_the_option_is_documented_in_the_help(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert "--ledgerflow-db=URL" in done.stdout
