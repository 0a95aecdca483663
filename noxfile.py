"""Every routine task is a session: ``nox -s tests``, ``lint``, ``typecheck``, ``docs``."""

from __future__ import annotations

from pathlib import Path

import nox

nox.needs_version = ">=2024.4.15"
nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

PYTHON = "3.11"


# first-party plugin distributions (plugins/) and the example third-party plugin (contrib/):
# each has its own pyproject.toml and tests, installed and run with the core's
PLUGINS = sorted(
    str(p.parent)
    for p in [*Path("plugins").glob("*/pyproject.toml"), *Path("contrib").glob("*/pyproject.toml")]
)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the test suite, the plugins' included, against the installed packages (not the
    source tree)."""
    session.install(".[test,postgres]", *(f"./{plugin}[test]" for plugin in PLUGINS))
    suites = ["tests", *(f"{plugin}/tests" for plugin in PLUGINS if Path(plugin, "tests").is_dir())]
    session.run(
        "pytest",
        "--import-mode=importlib",
        "-p",
        "no:cacheprovider",
        *(session.posargs or suites),
    )


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", "core", "tests", "benchmarks", "noxfile.py", *PLUGINS)
    session.run("ruff", "format", "--check", "core", "tests", "benchmarks", "noxfile.py", *PLUGINS)


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package and the tests."""
    session.install(
        "-e",
        ".[test,postgres]",
        *(f"./{plugin}[test]" for plugin in PLUGINS),
        "mypy>=1.11",
        "types-PyYAML",
        "types-jsonschema",
    )
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
def chaos(session: nox.Session) -> None:
    """The reliability battery at its long size (20,000 events, 4 workers, SIGKILLs, Redis and
    PostgreSQL restarts, a 10-minute soak), then its table written to
    docs/content/reliability.md (not part of the default sessions; the short size runs with
    every ``nox -s tests``).

    Needs ``redis-server`` and PostgreSQL's server programs (``pg_config --bindir``): it starts
    private instances on free ports. ``nox -s chaos -- --size medium`` runs another size; every
    argument goes to ``tests/chaos/report.py``.
    """
    session.install(".[test,postgres]", "./plugins/ledgerflow-redis[test]")
    session.run(
        "python", "tests/chaos/report.py", *(session.posargs or ["--size", "long", "--write"])
    )


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Compare ledgerflow with DBOS Transact, Celery, Dramatiq and a raw floor on the reference
    workload, then measure enqueue latency, replay cost and 1, 2 and 4 workers; write the
    results to docs/content/benchmarks.md (not part of the default sessions, nor of CI).

    Needs ``redis-server`` and PostgreSQL's server programs (``pg_config --bindir``): it starts
    private instances on free ports. The peers are installed into ``benchmarks/.venv-peers``
    from ``benchmarks/peers-requirements.txt``. ``nox -s bench -- --quick`` is a smoke run of a
    few minutes; every argument goes to ``benchmarks/compare.py`` (``--help`` lists them).
    """
    session.install(".[postgres]", "./plugins/ledgerflow-redis")
    session.run("python", "benchmarks/compare.py", *session.posargs)
