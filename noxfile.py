"""Every routine task is a session: ``nox -s tests``, ``lint``, ``typecheck``, ``docs``."""

from __future__ import annotations

import nox

nox.needs_version = ">=2024.4.15"
nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the test suite against the installed package (not the source tree)."""
    session.install(".[test,postgres]")
    session.run(
        "pytest",
        "--import-mode=importlib",
        "-p",
        "no:cacheprovider",
        *(session.posargs or ["tests"]),
    )


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", "core", "tests", "noxfile.py")
    session.run("ruff", "format", "--check", "core", "tests", "noxfile.py")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package and the tests."""
    session.install("-e", ".[test,postgres]", "mypy>=1.11", "types-PyYAML", "types-jsonschema")
    session.run("mypy", *session.posargs)


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the documentation site in strict mode: any warning fails the build."""
    session.install(".", "-r", "docs/requirements.txt")
    session.run(
        "mkdocs",
        "build",
        "--strict",
        "--config-file",
        "docs/mkdocs.yml",
        env={"NO_MKDOCS_2_WARNING": "1"},
    )


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Measure enqueue latency, end-to-end throughput, replay cost and parallel steps (not part
    of the tests).

    ``nox -s bench -- --quick`` is a one-minute smoke run; figures are printed as one table.
    """
    session.install(".[postgres]")
    session.run("python", "benchmarks/ledger_bench.py", *session.posargs)
    session.run("python", "benchmarks/steps_bench.py")
