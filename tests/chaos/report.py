"""Run the reliability battery and print its figures as one table; with ``--write``, publish the
table on docs/content/reliability.md (between its ``chaos-table`` markers).

    python tests/chaos/report.py --size medium --write      # what nox -s chaos runs, at long

Every scenario appends its row to a JSON-lines file (``LEDGERFLOW_CHAOS_RESULTS``) as it ends;
``--results FILE`` prints the table from such a file without running anything.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "content" / "reliability.md"
START, END = "<!-- chaos-table:start -->", "<!-- chaos-table:end -->"
COLUMNS = [
    ("scenario", "scenario"),
    ("events", "events"),
    ("faults", "faults injected"),
    ("lost", "lost"),
    ("duplicated", "duplicated effects"),
    ("order_violations", "order violations"),
    ("replay_mismatches", "replay mismatches"),
    ("tenant_leaks", "tenant leaks"),
    ("seconds", "time (s)"),
]


def run(size: str, results: Path, pytest_args: list[str]) -> int:
    """Run tests/chaos at ``size``, its rows going to ``results``; returns pytest's status."""
    env = {**os.environ, "LEDGERFLOW_CHAOS": size, "LEDGERFLOW_CHAOS_RESULTS": str(results)}
    command = [sys.executable, "-m", "pytest", "tests/chaos", "-p", "no:cacheprovider", "-q"]
    return subprocess.call([*command, *pytest_args], cwd=ROOT, env=env)


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table, then each scenario's notes."""
    lines = [
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "|".join(" --- " if key == "scenario" else " ---: " for key, _ in COLUMNS) + "|",
    ]
    for row in rows:
        lines.append(
            "| "
            + " | ".join(
                f"{row[key]:,}" if isinstance(row[key], int) else str(row[key])
                for key, _ in COLUMNS
            )
            + " |"
        )
    notes = [f"- **{row['scenario']}**: {'; '.join(row['notes'])}" for row in rows if row["notes"]]
    return "\n".join([*lines, "", *notes])


def publish(text: str, size: str) -> None:
    """Put ``text`` between the page's markers."""
    page = PAGE.read_text()
    head, rest = page.split(START, 1)
    _, tail = rest.split(END, 1)
    body = f"{START}\n\nMeasured with `LEDGERFLOW_CHAOS={size}`:\n\n{text}\n\n{END}"
    PAGE.write_text(head + body + tail)


def main() -> int:
    """Run (or read) the battery's results, print the table, and publish it if asked."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default=os.environ.get("LEDGERFLOW_CHAOS", "short"))
    parser.add_argument("--results", type=Path, help="print the table from this file only")
    parser.add_argument("--write", action="store_true", help="publish it on the docs page")
    parser.add_argument("pytest_args", nargs="*", help="more arguments for pytest")
    options = parser.parse_args()
    status = 0
    if options.results is None:
        with tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False) as file:
            options.results = Path(file.name)
        status = run(options.size, options.results, options.pytest_args)
    rows = [json.loads(line) for line in options.results.read_text().splitlines() if line]
    text = table(rows)
    print(text)
    if options.write and status == 0:
        publish(text, options.size)
        print(f"\nwritten to {PAGE.relative_to(ROOT)}")
    elif options.write:
        print("\nnot written: the battery failed", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
