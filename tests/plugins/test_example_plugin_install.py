"""The acceptance test of the plugin system: a third-party plugin is a wheel you install.

It builds two wheels from this checkout, ledgerflow's and the example plugin's
(``contrib/ledgerflow-billing``), installs both into a fresh virtual environment (ledgerflow's
own dependencies come from the package index, as for a user) and then, through the
``ledgerflow`` command of that environment only, checks that the plugin is found, that its
actions are listed with their schemas, and that a workflow calling them runs end to end. Nothing
in the environment comes from the development install.

Everything runs in real subprocesses. A step that cannot be done (no network for the
dependencies, a wheel that does not build) fails the test, with the command's output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "contrib" / "ledgerflow-billing"
WORKFLOW = PLUGIN / "examples" / "invoice_billing.yaml"
TENANT = "acme"
BILLING_ACTIONS = ["billing.compute_tax", "billing.issue_credit_note"]


def run(
    command: Sequence[str | Path],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 300,
) -> str:
    """Run ``command``; its standard output, or a test failure showing everything it said."""
    try:
        done = subprocess.run(
            [str(part) for part in command],
            env=dict(env) if env is not None else None,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(map(str, command))} took more than {timeout}s: {exc}")
    if done.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, command))} exited with {done.returncode}\n"
            f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
        )
    return done.stdout


class FreshEnvironment:
    """A virtual environment holding the two wheels and their dependencies, and nothing of
    the development install; ``ledgerflow(...)`` runs its command against ``db``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.venv = root / "venv"
        self.bin = self.venv / ("Scripts" if os.name == "nt" else "bin")
        self.python = self.bin / "python"
        self.work = root / "work"
        self.work.mkdir()
        self.db = f"sqlite:///{self.work / 'ledger.db'}"
        self.setup_seconds = 0.0

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of its commands: the caller's, less anything that would point
        Python or ledgerflow elsewhere."""
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
            and not key.startswith("LEDGERFLOW_")
        }
        env["PATH"] = os.pathsep.join([str(self.bin), env.get("PATH", "")])
        env["VIRTUAL_ENV"] = str(self.venv)
        env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        env["LEDGERFLOW_DB"] = self.db
        env.update(extra)
        return env

    def create(self) -> None:
        started = time.monotonic()
        wheels = self.root / "wheels"
        for source in (PLUGIN, ROOT):
            run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, source])
        built = {path.name.split("-")[0]: path for path in wheels.glob("*.whl")}
        assert set(built) == {"ledgerflow", "ledgerflow_billing"}, sorted(wheels.iterdir())
        run([sys.executable, "-m", "venv", self.venv])
        # the wheel files themselves, so neither can come from an index; their dependencies do
        run(
            [self.python, "-m", "pip", "install", "-q", *built.values()],
            env=self.env(),
        )
        self.setup_seconds = time.monotonic() - started

    def ledgerflow(self, *args: str, **env: str) -> Any:
        """Run ``ledgerflow ARGS --json`` of the environment; the JSON document it printed."""
        out = run([self.bin / "ledgerflow", *args, "--json"], env=self.env(**env), cwd=self.work)
        try:
            return json.loads(out)
        except json.JSONDecodeError:
            pytest.fail(f"ledgerflow {' '.join(args)} --json printed no JSON document:\n{out}")


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> FreshEnvironment:
    environment = FreshEnvironment(tmp_path_factory.mktemp("fresh-venv"))
    environment.create()
    return environment


def test_the_environment_holds_the_wheels_not_the_checkout(
    fresh: FreshEnvironment, record_property: Callable[[str, object], None]
) -> None:
    out = run(
        [
            fresh.python,
            "-c",
            "import ledgerflow, ledgerflow_billing, importlib.metadata as m; "
            "print(ledgerflow.__file__); print(ledgerflow_billing.__file__); "
            "print(m.version('ledgerflow'), m.version('ledgerflow-billing'))",
        ],
        env=fresh.env(),
        cwd=fresh.work,
    )
    core, plugin, versions = out.splitlines()
    for path in (core, plugin):
        assert Path(path).is_relative_to(fresh.venv), path
    assert versions == "0.1.0 0.1.0"
    # two builds, a venv and an install: kept in the JUnit report, to notice it growing
    record_property("fresh_environment_seconds", round(fresh.setup_seconds, 1))


def test_ledgerflow_plugins_lists_billing_from_its_distribution(fresh: FreshEnvironment) -> None:
    plugins = {info["name"]: info for info in fresh.ledgerflow("plugins")}
    # ledgerflow's own and the one installed: nothing else is in this environment
    assert sorted(plugins) == ["billing", "ledgerflow.builtin"]
    assert plugins["billing"] == {
        "name": "billing",
        "source": "entry point",
        "distribution": "ledgerflow-billing",
        "version": "0.1.0",
        "hooks": [
            "ledgerflow_execution_completed",
            "ledgerflow_register_actions",
            "ledgerflow_retry_policy",
            "ledgerflow_run_step",
        ],
        "registered": {"actions": BILLING_ACTIONS},
        "errors": [],
        "disabled": False,
    }
    assert plugins["ledgerflow.builtin"]["errors"] == []


def test_ledgerflow_actions_lists_the_billing_actions_with_their_schemas(
    fresh: FreshEnvironment,
) -> None:
    actions = {action["name"]: action for action in fresh.ledgerflow("actions")}
    assert [name for name in actions if name.startswith("billing.")] == BILLING_ACTIONS
    tax, note = actions["billing.compute_tax"], actions["billing.issue_credit_note"]
    assert (tax["kind"], tax["isolation"]) == ("simple", None)
    assert (note["kind"], note["isolation"]) == ("database", "SERIALIZABLE")
    assert tax["description"].startswith("Compute the VAT on a net amount")
    for action in (tax, note):
        schema = action["parameters"]
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["additionalProperties"] is False
    assert tax["parameters"]["required"] == ["amount", "country"]
    assert tax["parameters"]["properties"]["amount"]["type"] == "number"
    assert "DE" in tax["parameters"]["properties"]["country"]["enum"]
    assert note["parameters"]["required"] == ["invoice_id", "invoice_total", "amount", "reason"]
    assert note["parameters"]["properties"]["currency"]["default"] == "EUR"
    validator = jsonschema.Draft202012Validator(tax["parameters"])
    assert validator.is_valid({"amount": 10, "country": "DE"})
    assert not validator.is_valid({"amount": 10, "country": "XX"})


def test_a_workflow_runs_the_plugins_actions_through_the_command_line(
    fresh: FreshEnvironment,
) -> None:
    # the schema, and the plugin's credit_notes table (created by its --app module)
    assert fresh.ledgerflow("--app", "ledgerflow_billing.tables", "db", "upgrade")["revision"]
    # from here on, nothing but the installed plugin tells ledgerflow about its actions
    [registered] = fresh.ledgerflow("workflow", "register", str(WORKFLOW))
    assert (registered["workflow"], registered["version"]) == ("InvoiceBilling", 1)
    execution_id = fresh.ledgerflow("start", "InvoiceBilling", "--tenant", TENANT)["execution_id"]

    def send(event: str, payload: Mapping[str, Any] | None = None) -> None:
        extra = ["--payload", json.dumps(payload)] if payload is not None else []
        fresh.ledgerflow("send", execution_id, event, "--tenant", TENANT, *extra)

    send("Issue", {"invoice": {"id": "INV-1", "net": 100, "country": "DE"}})
    send("Credit", {"amount": 19.5, "reason": "damaged on delivery"})
    send("Close")
    summary = fresh.ledgerflow("worker", "--until-idle")
    assert (summary["events"], summary["errors"], summary["failing_executions"]) == (3, 0, [])

    shown = fresh.ledgerflow("execution", "show", execution_id, "--tenant", TENANT)
    assert (shown["state"], shown["status"]) == ("closed", "completed")
    tax = {"country": "DE", "rate": 0.19, "net": 100.0, "tax": 19.0, "gross": 119.0}
    assert shown["context"]["tax"] == tax

    history = fresh.ledgerflow("execution", "history", execution_id, "--tenant", TENANT)
    results = {
        row["record"]["step_id"]: row["record"]["result"]
        for row in history
        if row["kind"] == "step_succeeded"
    }
    assert results["tax"] == tax
    assert results["credit_note"] == {
        "credit_note": "CN-000001",
        "number": 1,
        "invoice_id": "INV-1",
        "amount": 19.5,
        "currency": "EUR",
        "credited_total": 19.5,
        "remaining": 99.5,
    }
    assert [row["kind"] for row in history if row["kind"].startswith("step_")] == [
        "step_succeeded"
    ] * 3


def test_disabled_by_name_the_plugin_is_listed_and_its_actions_are_not(
    fresh: FreshEnvironment,
) -> None:
    off = {"LEDGERFLOW_DISABLE_PLUGINS": "billing"}
    plugins = {info["name"]: info for info in fresh.ledgerflow("plugins", **off)}
    assert plugins["billing"]["disabled"] is True
    assert plugins["billing"]["distribution"] == "ledgerflow-billing"
    names = [action["name"] for action in fresh.ledgerflow("actions", **off)]
    assert not [name for name in names if name.startswith("billing.")]
