"""The ``ledgerflow`` command.

Every command that prints data takes ``--json`` and then prints exactly one JSON document.
Errors are one readable line on stderr and a non-zero exit; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from ledgerflow import definitions, diagrams
from ledgerflow.errors import DefinitionError, LedgerflowError

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])

EXIT_INVALID = 1
"""Exit code of ``workflow validate`` when a definition is invalid."""
EXIT_ERROR = 2
"""Exit code when a command could not do what was asked (bad input, unreadable file, …)."""


class _Group(click.Group):
    """Turns every ledgerflow error into one line on stderr, unless ``--debug`` is on."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LedgerflowError as exc:
            if ctx.find_root().params.get("debug"):
                raise
            first, *rest = str(exc).splitlines() or [type(exc).__name__]
            more = f" (and {len(rest)} more)" if rest else ""
            click.echo(f"error: {first}{more}", err=True)
            ctx.exit(EXIT_ERROR)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show the traceback of any error.")
@click.version_option(package_name="ledgerflow")
def cli(debug: bool) -> None:
    """ledgerflow: durable, event-sourced workflows."""


@cli.group(cls=_Group)
def workflow() -> None:
    """Check and draw workflow definitions."""


@workflow.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def validate_command(files: Sequence[Path], as_json: bool) -> None:
    """Check definition FILES; print every problem, one per line, and exit 1 if any."""
    report: list[dict[str, Any]] = []
    for path in files:
        try:
            definition = definitions.load(path)
        except DefinitionError as exc:
            report.append(
                {"file": str(path), "valid": False, "problems": [str(p) for p in exc.problems]}
            )
        else:
            report.append(
                {
                    "file": str(path),
                    "valid": True,
                    "workflow": definition.name,
                    "version": definition.version,
                    "problems": [],
                }
            )
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        for entry in report:
            if entry["valid"]:
                click.echo(f"{entry['file']}: ok ({entry['workflow']} v{entry['version']})")
            for problem in entry["problems"]:
                click.echo(problem)
    if not all(entry["valid"] for entry in report):
        sys.exit(EXIT_INVALID)


@workflow.command("show")
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["mermaid", "json", "yaml"]),
    default="mermaid",
    show_default=True,
    help="Mermaid state diagram, or the canonical definition as JSON or YAML.",
)
def show_command(file: Path, fmt: str) -> None:
    """Print the definition in FILE as a diagram or in canonical form."""
    definition = definitions.load(file)
    if fmt == "mermaid":
        click.echo(diagrams.mermaid(definition), nl=False)
    else:
        click.echo(definitions.dumps(definition, "json" if fmt == "json" else "yaml"), nl=False)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the ``ledgerflow`` command with ``argv`` (default: the process's arguments)."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="ledgerflow")
