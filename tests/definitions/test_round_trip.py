"""Every form of a definition reads into the same value."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings

import ledgerflow
from generated_workflows import workflows
from ledgerflow import Workflow, definitions


@given(workflow=workflows())
def test_yaml_to_object_to_json_to_object_is_the_identity(workflow: Workflow) -> None:
    as_yaml = definitions.dumps(workflow, "yaml")
    from_yaml = ledgerflow.loads(as_yaml, "yaml").workflow
    assert from_yaml == workflow
    as_json = definitions.dumps(from_yaml, "json")
    assert ledgerflow.loads(as_json, "json").workflow == workflow
    assert definitions.parse(json.loads(as_json)) == workflow


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=25)
@given(workflow=workflows())
def test_files_of_every_format_load_to_the_same_definition(
    tmp_path: Path, workflow: Workflow
) -> None:
    data = definitions.to_data(workflow)
    json_path = tmp_path / "w.json"
    definitions.dump(workflow, json_path)
    yaml_path = tmp_path / "w.yaml"
    definitions.dump(workflow, yaml_path)
    toml_path = tmp_path / "w.toml"
    toml_path.write_text(_to_toml(data))
    assert tomllib.loads(toml_path.read_text()) == data
    loaded = [ledgerflow.load(p).workflow for p in (json_path, yaml_path, toml_path)]
    assert all(w == workflow for w in loaded)


def _to_toml(data: object) -> str:
    """TOML through its JSON-compatible inline forms: enough for definitions."""
    assert isinstance(data, dict)
    return "".join(f"{key} = {_toml_value(value)}\n" for key, value in data.items())


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
        )
    raise TypeError(f"no TOML form for {value!r}")


def test_the_example_reads_the_same_from_yaml_json_and_python(invoice_path: Path) -> None:
    from_yaml = ledgerflow.load(invoice_path).workflow
    text = invoice_path.read_text()
    # PyYAML's own loader reads the key on: as True (YAML 1.1); quoting it gives the same value
    quoted = re.sub(r"^(\s*(?:- )?)on:", r"\1'on':", text, flags=re.MULTILINE)
    assert definitions.parse(yaml.safe_load(quoted)) == from_yaml
    assert ledgerflow.loads(definitions.dumps(from_yaml), "json").workflow == from_yaml
