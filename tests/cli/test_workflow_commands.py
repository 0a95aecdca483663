"""`ledgerflow workflow validate` and `ledgerflow workflow show`, run as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import ledgerflow
from ledgerflow import definitions, diagrams

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ledgerflow", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    path = tmp_path / "broken.yaml"
    path.write_text(
        """
name: Broken
version: 1
initial_state: a
states: [a, b, c]
terminal_states: [b]
transitions:
  - {from: a, to: b, on: Go, condition: "payload.x >"}
  - {from: a, to: z, on: Other, after: soon}
"""
    )
    return path


def test_validate_accepts_the_example(invoice_path: Path) -> None:
    result = run("workflow", "validate", str(invoice_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{invoice_path}: ok (InvoiceApproval v1)\n"


def test_validate_prints_every_problem_one_per_line_and_exits_1(
    broken: Path, invoice_path: Path
) -> None:
    result = run("workflow", "validate", str(invoice_path), str(broken))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0] == f"{invoice_path}: ok (InvoiceApproval v1)"
    problems = lines[1:]
    assert all(line.startswith(f"{broken}: ") for line in problems)
    joined = "\n".join(problems)
    assert "transitions[0] (Go) condition: line 1, column 12: Syntax error" in joined
    assert "transitions[1] (Other): unknown target state 'z'" in joined
    assert "transitions[1] (Other) after: bad duration 'soon'" in joined
    assert "states: state 'c' cannot be reached from 'a'" in joined
    assert "non-terminal state 'c' has no transition out of it" in joined
    assert len(problems) == 5
    assert result.stderr == ""


def test_validate_json_is_one_document(broken: Path, invoice_path: Path) -> None:
    result = run("workflow", "validate", "--json", str(invoice_path), str(broken))
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report[0] == {
        "file": str(invoice_path),
        "valid": True,
        "workflow": "InvoiceApproval",
        "version": 1,
        "problems": [],
    }
    assert report[1]["valid"] is False
    assert len(report[1]["problems"]) == 5


def test_validate_reports_unreadable_files(tmp_path: Path) -> None:
    result = run("workflow", "validate", str(tmp_path / "absent.yaml"))
    assert result.returncode == 1
    assert "No such file" in result.stdout


def test_show_prints_the_mermaid_diagram(invoice_path: Path) -> None:
    result = run("workflow", "show", str(invoice_path), "--format", "mermaid")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("---\ntitle: InvoiceApproval v1\n---\nstateDiagram-v2\n")
    assert "    [*] --> draft\n" in result.stdout
    assert "    pending_approval --> escalated : EscalationDue after 48h\n" in result.stdout
    assert "    approved --> [*]\n" in result.stdout
    # the docs show the same diagram
    assert (ROOT / "docs" / "content" / "invoice_approval.mmd").read_text() == result.stdout


def test_show_json_is_the_canonical_definition(
    invoice_path: Path, invoice: ledgerflow.Definition
) -> None:
    result = run("workflow", "show", str(invoice_path), "--format", "json")
    assert result.returncode == 0, result.stderr
    assert definitions.parse(json.loads(result.stdout)) == invoice.workflow
    as_yaml = run("workflow", "show", str(invoice_path), "--format", "yaml")
    assert ledgerflow.loads(as_yaml.stdout, "yaml").workflow == invoice.workflow


def test_show_of_an_invalid_file_is_one_line_on_stderr(broken: Path) -> None:
    result = run("workflow", "show", str(broken))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"error: {broken}: ")
    assert "(and 4 more)" in result.stderr
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback(broken: Path) -> None:
    result = run("--debug", "workflow", "show", str(broken))
    assert result.returncode != 0
    assert "Traceback" in result.stderr
    assert "DefinitionError" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("workflow", "validate"),
        ("workflow", "show"),
        ("workflow", "show", "x.yaml", "--format", "png"),
        ("workflow", "explode"),
    ],
)
def test_bad_arguments_exit_2_with_usage(args: tuple[str, ...]) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert "Usage:" in result.stderr


def test_the_mermaid_diagram_escapes_what_would_end_a_label() -> None:
    definition = ledgerflow.loads(
        '{"name": "W", "version": 1, "initial_state": "a", "states": ["a", "b"],'
        ' "terminal_states": ["b"], "transitions": [{"from": "*", "to": "b", "on": "Go",'
        ' "condition": "payload.a == \\"x;y\\""}]}',
        "json",
    )
    text = diagrams.mermaid(definition)
    assert '    a --> b : Go [payload.a == "x#59;y"]\n' in text
