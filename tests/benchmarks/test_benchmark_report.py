"""The comparison benchmark's verification and report, on data made up here (no servers, no
peers, nothing timed): a run that left every row once passes, a missing, doubled or blind row
is named, and the table shows medians with their spread and the ratio to the raw floor."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import sqlalchemy as sa

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _module(name: str) -> ModuleType:
    # the benchmarks are scripts that import each other from their folder
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


@pytest.fixture
def effects(tmp_path: Path) -> sa.Engine:
    workload = _module("workload")
    url = f"sqlite:///{tmp_path / 'effects.db'}"
    workload.create_tables(url)
    return sa.create_engine(url)


def _run_workflows(engine: sa.Engine, names: list[str], skip_b: str | None = None) -> None:
    workload = _module("workload")
    for name in names:
        for action in workload.ACTIONS:
            if action == "B" and name == skip_b:
                continue
            with engine.begin() as conn:
                workload.write_effect(conn, name, action)


def test_a_clean_run_passes(effects: sa.Engine) -> None:
    workload = _module("workload")
    _run_workflows(effects, ["r1-wf-0", "r1-wf-1"])
    with effects.connect() as conn:
        verdict = workload.verify(conn, "r1-wf-", 2)
    assert verdict.problems == []
    assert (verdict.rows, verdict.c_saw_both, verdict.dup_hits) == (6, 2, 0)
    assert verdict.per_action == {"A": 2, "B": 2, "C": 2}


def test_a_repeat_is_counted_and_a_missing_row_named(effects: sa.Engine) -> None:
    workload = _module("workload")
    _run_workflows(effects, ["r1-wf-0", "r1-wf-1"], skip_b="r1-wf-1")
    with effects.begin() as conn:
        workload.write_effect(conn, "r1-wf-0", "A")  # a re-run: counted, not hidden
    with effects.connect() as conn:
        verdict = workload.verify(conn, "r1-wf-", 2)
    assert verdict.dup_hits == 1
    assert "5 rows, expected 6" in verdict.problems
    assert "1 rows of action B, expected 2" in verdict.problems
    assert "only 1 of 2 C rows saw both A and B" in verdict.problems


def test_the_table_gives_medians_spread_and_ratio_to_the_floor() -> None:
    compare = _module("compare")
    runs: list[dict[str, Any]] = [
        {
            "key": "raw",
            "round": 1,
            "workflows": 100,
            "workflows_per_second": 1000.0,
            "submit_ms": [0.1],
            "submit_seconds": 0.05,
        },
        {"key": "raw", "round": 2, "workflows_per_second": 800.0, "submit_ms": [0.1]},
        {
            "key": "lf-redis",
            "round": 1,
            "workflows_per_second": 500.0,
            "actions_per_second": 1500.0,
            "steps_per_second": 4000.0,
            "quick_steps_per_second": 6000.0,
            "submit_ms": [1.0, 2.0, 3.0],
            "verdict": {"dup_hits": 0},
        },
        {
            "key": "lf-redis",
            "round": 2,
            "workflows_per_second": 200.0,
            "actions_per_second": 600.0,
            "submit_ms": [1.0],
            "problems": ["10 rows, expected 6"],
        },
    ]
    entries = [e for e in compare.SYSTEMS if e.key in ("raw", "lf-redis")]
    summary = compare.summarise(runs, entries)
    rows = {row[0]: row for row in compare.table_rows(summary)}
    lf = rows["ledgerflow, PostgreSQL + Redis Streams"]
    assert lf[1] == "350 (200-500)"
    assert lf[3] == "0.375x (0.250-0.500x)"  # 500/1000 and 200/800, each in its own round
    assert lf[4].startswith("1.50 / ")
    assert rows["raw floor (XADD, 2 consumers, 3 inserts, XACK)"][5] == "2,000"
    assert (lf[6], lf[7]) == ("4,000", "6,000")  # steps/s, each checkpointed and not
    assert rows["raw floor (XADD, 2 consumers, 3 inserts, XACK)"][7] == "-"
    assert lf[9] == "FAILED (1)"
    assert rows["raw floor (XADD, 2 consumers, 3 inserts, XACK)"][9] == "ok"
    markdown = _module("reporting").markdown_table(compare.HEADER, compare.table_rows(summary))
    assert markdown.splitlines()[1].startswith("| --- | ---: |")


def test_a_report_names_the_command_without_this_machines_paths() -> None:
    command_line = _module("reporting").command_line
    argv = [
        "/somewhere/checkout/benchmarks/ledger_bench.py",
        "--pg",
        "postgresql://postgres@127.0.0.1:54477/postgres",
        "--json=/tmp/run/ledger.json",
        "--rounds",
        "1",
    ]
    assert command_line(argv) == "python benchmarks/ledger_bench.py --pg URL --json=FILE --rounds 1"
    assert command_line(["benchmarks/compare.py", "--json", "out.json", "--quick"]) == (
        "python benchmarks/compare.py --json FILE --quick"
    )
