"""Plugins found through installed distributions' entry points (a real ``.dist-info`` on the
path, as pip lays it out), the ``--app`` module, and ``ledgerflow plugins`` listing them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ledgerflow.plugins import Plugins

GOOD = """
from ledgerflow.hookspecs import hookimpl


@hookimpl
def ledgerflow_register_actions(registry):
    registry.register_simple_action(
        "acme.greet", "Greets.", [{"name": "who", "type": "string"}],
        lambda params, ctx: "hello " + params["who"],
    )


@hookimpl
def ledgerflow_event_enqueued(event):
    print("enqueued", event)
"""

BROKEN = """
raise ImportError("needs libacme 2")
"""

APP = """
from ledgerflow.hookspecs import hookimpl


@hookimpl
def ledgerflow_register_actions(registry):
    registry.register_simple_action("app.echo", "Echoes.", [], lambda params, ctx: params)
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A folder holding one installed distribution, ``acme-plugins`` 1.4.0, with two entry
    points in the group ``ledgerflow``: one good, one that fails to import."""
    root = tmp_path / "site"
    info = root / "acme_plugins-1.4.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-plugins\nVersion: 1.4.0\n")
    (info / "entry_points.txt").write_text(
        "[ledgerflow]\nacme = acme_plugin\nacme-broken = acme_broken\n"
    )
    (root / "acme_plugin.py").write_text(textwrap.dedent(GOOD))
    (root / "acme_broken.py").write_text(textwrap.dedent(BROKEN))
    (root / "my_app.py").write_text(textwrap.dedent(APP))
    return root


def test_entry_points_are_loaded_with_their_distribution(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("LEDGERFLOW_DISABLE_PLUGINS", raising=False)
    infos = {p.name: p for p in Plugins().describe()}
    good = infos["acme"]
    assert (good.source, good.distribution, good.version) == (
        "entry point",
        "acme-plugins",
        "1.4.0",
    )
    assert good.hooks == ("ledgerflow_event_enqueued", "ledgerflow_register_actions")
    broken = infos["acme-broken"]
    assert broken.errors == ("cannot be loaded: ImportError: needs libacme 2",)
    assert broken.distribution == "acme-plugins"


def test_disabled_plugins_are_not_loaded(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("LEDGERFLOW_DISABLE_PLUGINS", " acme-broken , acme")
    infos = {p.name: p for p in Plugins().describe()}
    assert infos["acme"].disabled
    assert infos["acme-broken"].disabled
    assert infos["acme-broken"].errors == ()
    assert infos["acme"].hooks == ()


def run(site: Path, db: str, *args: str, disable: str = "") -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "LEDGERFLOW_DISABLE_PLUGINS": disable,
    }
    return subprocess.run(
        [sys.executable, "-m", "ledgerflow", "--db", db, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
        cwd=site,
    )


def test_ledgerflow_plugins_lists_every_plugin_and_what_it_registered(
    site: Path, tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path}/plugins.db"
    assert run(site, db, "db", "upgrade").returncode == 0
    listed = run(site, db, "--app", "my_app", "plugins", "--json")
    assert listed.returncode == 0, listed.stderr
    plugins = {p["name"]: p for p in json.loads(listed.stdout)}
    assert plugins["acme"]["registered"] == {"actions": ["acme.greet"]}
    assert plugins["acme"]["distribution"] == "acme-plugins"
    assert plugins["my_app"]["source"] == "app"
    assert plugins["my_app"]["registered"] == {"actions": ["app.echo"]}
    assert plugins["acme-broken"]["errors"] == ["cannot be loaded: ImportError: needs libacme 2"]
    assert "ledgerflow.builtin" in plugins
    # the broken plugin is reported on every command, by name, and the command still works
    assert "plugin acme-broken (acme-plugins): cannot be loaded" in listed.stderr

    text = run(site, db, "plugins", disable="acme-broken")
    assert text.returncode == 0, text.stderr
    assert "acme (entry point, acme-plugins 1.4.0)" in text.stdout
    assert "    actions: acme.greet" in text.stdout
    assert "    hooks: ledgerflow_event_enqueued" in text.stdout
    assert "acme-broken (entry point, acme-plugins 1.4.0) [disabled]" in text.stdout
    assert text.stderr == ""

    actions = run(site, db, "actions", "--json", disable="acme-broken")
    names = [a["name"] for a in json.loads(actions.stdout)]
    assert "acme.greet" in names
