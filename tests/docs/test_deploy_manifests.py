"""The deployment files in ``contrib/deploy`` (see docs/content/deployment.md) hold up.

The Kubernetes manifests are Kubernetes objects that fit together; every ``ledgerflow`` command
and option they, and the systemd unit, use exists (asked of ``python -m ledgerflow … --help``);
the Job's and the probes' commands behave as the probes need, run for real on an SQLite ledger;
the liveness probe's shell command tells a fresh health file from a stale one; the systemd unit
drains its worker on SIGTERM; and the Dockerfile installs the PostgreSQL extra and runs as an
unprivileged user.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml

from ledgerflow.cli import cli

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "contrib" / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
UNIT = DEPLOY / "systemd" / "ledgerflow-worker@.service"
ENV_EXAMPLE = DEPLOY / "systemd" / "ledgerflow.env.example"
DOCKERFILE = DEPLOY / "Dockerfile"

# a name Kubernetes accepts for these kinds (RFC 1123 subdomain)
NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
PLACEHOLDER = "CHANGE-ME"


# --------------------------------------------------------------------------------------------
# Reading the files
# --------------------------------------------------------------------------------------------


def manifest_files() -> list[Path]:
    return sorted([*KUBERNETES.glob("*.yaml"), *KUBERNETES.glob("*.yml")])


def manifests() -> list[tuple[Path, dict[str, Any]]]:
    """Every object of every manifest file, with its file."""
    found = []
    for path in manifest_files():
        with path.open(encoding="utf-8") as stream:
            for document in yaml.safe_load_all(stream):
                if document is not None:
                    assert isinstance(document, dict), f"{path.name}: not a mapping: {document!r}"
                    found.append((path, document))
    return found


def the(kind: str) -> dict[str, Any]:
    """The one object of ``kind`` among the manifests."""
    objects = [obj for _, obj in manifests() if obj.get("kind") == kind]
    assert len(objects) == 1, f"expected one {kind} in {KUBERNETES}, found {len(objects)}"
    return objects[0]


def pod_spec(obj: Mapping[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = obj["spec"]["template"]["spec"]
    return spec


def the_container(obj: Mapping[str, Any]) -> dict[str, Any]:
    containers = pod_spec(obj)["containers"]
    assert len(containers) == 1, f"{obj['kind']} {obj['metadata']['name']}: one container"
    container: dict[str, Any] = containers[0]
    return container


def argv_of(container: Mapping[str, Any]) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


def option_value(argv: Sequence[str], option: str) -> str:
    """The value given to ``option`` (``--opt VALUE`` or ``--opt=VALUE``) in ``argv``."""
    for n, arg in enumerate(argv):
        if arg == option:
            return argv[n + 1]
        if arg.startswith(option + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{option} is not given in {argv}")


def unit_sections(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file as ``{section: {key: [values, in order]}}`` (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, equals, value = line.partition("=")
        assert current is not None, f"{path.name}: a line before any section: {raw!r}"
        assert equals, f"{path.name}: not a unit line: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines, as systemd's EnvironmentFile reads them (no quotes used here)."""
    pairs = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            pairs[name] = value
    return pairs


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined, comments dropped (Docker
    drops comment lines inside a continued instruction too)."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, f"{path.name} ends inside a continued instruction"
    return instructions


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [n for n, (keyword, _) in enumerate(instructions) if keyword == "FROM"]
    assert starts, "no FROM"
    return instructions[starts[-1] :]


# --------------------------------------------------------------------------------------------
# Running ledgerflow
# --------------------------------------------------------------------------------------------


def ledgerflow_env(**settings: str) -> dict[str, str]:
    """This environment without any LEDGERFLOW_ setting of the developer's, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERFLOW_")}
    env.update(settings)
    return env


def run_ledgerflow(
    argv: Sequence[str], *, cwd: Path, env: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run a command line that starts with ``ledgerflow`` as ``python -m ledgerflow``."""
    assert Path(argv[0]).name == "ledgerflow", f"not a ledgerflow command: {argv}"
    return subprocess.run(
        [sys.executable, "-m", "ledgerflow", *argv[1:]],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def command_and_options(argv: Sequence[str]) -> tuple[tuple[str, ...], list[str]]:
    """The (sub)command words of a ``ledgerflow …`` command line, and the options it gives."""
    assert argv, "an empty command line"
    assert Path(argv[0]).name == "ledgerflow", f"not a ledgerflow command: {argv}"
    words: list[str] = []
    rest = list(argv[1:])
    while rest and not rest[0].startswith("-"):
        words.append(rest.pop(0))
    assert words, f"{argv}: no command (give global settings in the environment)"
    return tuple(words), [arg.split("=", 1)[0] for arg in rest if arg.startswith("-")]


@functools.cache
def help_text(words: tuple[str, ...]) -> str:
    """``python -m ledgerflow WORDS --help``, which must succeed."""
    done = subprocess.run(
        [sys.executable, "-m", "ledgerflow", *words, "--help"],
        cwd=ROOT,
        env=ledgerflow_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"ledgerflow {' '.join(words)} --help: {done.stderr}"
    return done.stdout


def ledgerflow_commands() -> Iterator[tuple[str, list[str]]]:
    """Every ``ledgerflow`` command line of the manifests and the unit, with where it is."""
    for path, obj in manifests():
        if obj["kind"] not in ("Deployment", "Job"):
            continue
        for container in pod_spec(obj)["containers"]:
            where = f"{path.name}:{container['name']}"
            yield f"{where}:command", argv_of(container)
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                command = container.get(probe, {}).get("exec", {}).get("command")
                if command and Path(command[0]).name == "ledgerflow":
                    yield f"{where}:{probe}", list(command)
    for exec_start in unit_sections(UNIT)["Service"]["ExecStart"]:
        yield f"{UNIT.name}:ExecStart", shlex.split(exec_start)


COMMANDS = list(ledgerflow_commands())


def global_envvars() -> set[str]:
    """The environment variables ``ledgerflow``'s global options read."""
    names: set[str] = set()
    for param in cli.params:
        if isinstance(param, click.Option) and param.envvar:
            envvar = param.envvar
            names.update([envvar] if isinstance(envvar, str) else envvar)
    return names


# --------------------------------------------------------------------------------------------
# Kubernetes
# --------------------------------------------------------------------------------------------


def test_deploy_manifests_are_kubernetes_objects() -> None:
    assert manifest_files(), f"no manifests in {KUBERNETES}"
    for path, obj in manifests():
        where = f"{path.name}: {obj.get('kind')}"
        assert isinstance(obj.get("apiVersion"), str), where
        assert obj["apiVersion"], where
        assert isinstance(obj.get("kind"), str), where
        assert obj["kind"][:1].isupper(), where
        metadata = obj.get("metadata")
        assert isinstance(metadata, dict), f"{where}: no metadata"
        name = metadata.get("name")
        assert isinstance(name, str), f"{where}: no name"
        assert NAME.match(name), f"{where}: {name!r} is not a Kubernetes name"
        assert len(name) <= 63, f"{where}: {name!r} is too long"
        # the set is applied into any namespace with -n
        assert "namespace" not in metadata, f"{where} names a namespace"
    kinds = sorted(obj["kind"] for _, obj in manifests())
    assert kinds == sorted(["ConfigMap", "Secret", "Job", "Deployment", "PodDisruptionBudget"])


def test_deploy_configuration_is_ledgerflows_and_the_secret_a_placeholder() -> None:
    config, secret = the("ConfigMap"), the("Secret")
    known = global_envvars()
    assert set(config["data"]) == {"LEDGERFLOW_APP", "LEDGERFLOW_BROKER"}
    assert set(secret["stringData"]) == {"LEDGERFLOW_DB"}
    assert set(config["data"]) | set(secret["stringData"]) <= known, known
    assert "data" not in secret, "the template's values belong in stringData, readable"
    url = urlsplit(secret["stringData"]["LEDGERFLOW_DB"])
    assert url.scheme == "postgresql"
    assert url.password == PLACEHOLDER, "the Secret template must hold no real password"
    # every container reads both, by the names they really have
    for kind in ("Job", "Deployment"):
        sources = the_container(the(kind))["envFrom"]
        assert {"configMapRef": {"name": config["metadata"]["name"]}} in sources, kind
        assert {"secretRef": {"name": secret["metadata"]["name"]}} in sources, kind


def test_deploy_the_job_upgrades_the_schema_and_the_deployment_runs_workers() -> None:
    job, deployment = the("Job"), the("Deployment")
    assert command_and_options(argv_of(the_container(job)))[0] == ("db", "upgrade")
    assert pod_spec(job)["restartPolicy"] in ("Never", "OnFailure")
    worker = the_container(deployment)
    assert command_and_options(argv_of(worker))[0] == ("worker",)
    readiness = worker["readinessProbe"]["exec"]["command"]
    assert command_and_options(readiness)[0] == ("health",)
    assert "exec" in worker["livenessProbe"]
    # above Kubernetes' default of 30 s, which is shorter than many a transition's steps
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] > 30
    assert set(worker["resources"]["requests"]) >= {"cpu", "memory"}
    # the Deployment's selector picks its own pods, and so does the disruption budget's
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    budget = the("PodDisruptionBudget")
    for selector in (deployment["spec"]["selector"], budget["spec"]["selector"]):
        assert selector["matchLabels"].items() <= pod_labels.items()


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[where for where, _ in COMMANDS])
def test_deploy_ledgerflow_commands_and_options_exist(where: str, argv: list[str]) -> None:
    words, options = command_and_options(argv)
    text = help_text(words)
    for option in options:
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text), (
            f"{where}: ledgerflow {' '.join(words)} has no option {option}"
        )


def test_deploy_the_job_and_the_probes_work_on_a_real_ledger(tmp_path: Path) -> None:
    """The Job's command creates the schema; the readiness probe fails before and passes after;
    the worker's command line, as the Deployment gives it, runs (until idle)."""
    env = ledgerflow_env(
        LEDGERFLOW_DB=f"sqlite:///{tmp_path / 'ledger.db'}",
        LEDGERFLOW_BROKER=the("ConfigMap")["data"]["LEDGERFLOW_BROKER"],
    )
    worker = the_container(the("Deployment"))
    readiness = worker["readinessProbe"]["exec"]["command"]

    before = run_ledgerflow(readiness, cwd=tmp_path, env=env)
    assert before.returncode == 1, before.stdout + before.stderr
    assert "ledgerflow db upgrade" in before.stdout

    upgrade = run_ledgerflow(argv_of(the_container(the("Job"))), cwd=tmp_path, env=env)
    assert upgrade.returncode == 0, upgrade.stderr
    assert "schema at revision" in upgrade.stdout

    after = run_ledgerflow(readiness, cwd=tmp_path, env=env)
    assert after.returncode == 0, after.stdout + after.stderr

    argv = argv_of(worker)
    health_file = option_value(argv, "--health-file")
    argv = [a.replace(health_file, str(tmp_path / "healthy")) for a in argv]
    done = run_ledgerflow([*argv, "--until-idle"], cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert "processed 0 events" in done.stdout


def test_deploy_liveness_probe_tells_a_fresh_health_file_from_a_stale_one(tmp_path: Path) -> None:
    worker = the_container(the("Deployment"))
    health_file = option_value(argv_of(worker), "--health-file")
    command = worker["livenessProbe"]["exec"]["command"]
    assert command[:2] in (["/bin/sh", "-c"], ["sh", "-c"]), command
    script = command[2]
    assert health_file in script, f"the probe does not look at {health_file}: {script}"
    # the worker writes it under /tmp: writable beside a read-only root filesystem
    mounts = [m["mountPath"] for m in worker.get("volumeMounts", [])]
    assert any(health_file.startswith(m.rstrip("/") + "/") for m in mounts), mounts

    here = tmp_path / "ledgerflow-healthy"
    probe = script.replace(health_file, str(here))

    def probe_status() -> int:
        return subprocess.run(["/bin/sh", "-c", probe], capture_output=True, timeout=10).returncode

    assert probe_status() != 0, "no health file yet (no heartbeat) must fail"
    here.touch()
    assert probe_status() == 0, "a health file touched now must pass"
    ten_minutes_ago = time.time() - 600
    os.utime(here, (ten_minutes_ago, ten_minutes_ago))
    assert probe_status() != 0, "a health file ten minutes old must fail"


# --------------------------------------------------------------------------------------------
# systemd
# --------------------------------------------------------------------------------------------


def test_deploy_systemd_unit_runs_a_worker_that_drains_on_sigterm() -> None:
    sections = unit_sections(UNIT)
    service = sections["Service"]
    (exec_start,) = service["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[0].startswith("/"), "systemd wants an absolute path"
    assert command_and_options(argv)[0] == ("worker",)
    assert "ledgerflow worker" in " ".join([Path(argv[0]).name, *argv[1:]])
    assert service["KillSignal"] == ["SIGTERM"]
    assert service["Restart"] == ["always"]
    assert service.get("TimeoutStopSec"), "give the drain a deadline above the longest step"
    assert service["User"] != ["root"]
    assert "WantedBy" in sections["Install"]


def test_deploy_systemd_environment_example_is_ledgerflows_and_a_placeholder() -> None:
    assert unit_sections(UNIT)["Service"]["EnvironmentFile"], "the unit reads no settings"
    settings = env_file(ENV_EXAMPLE)
    assert set(settings) <= global_envvars(), settings
    assert {"LEDGERFLOW_DB", "LEDGERFLOW_APP", "LEDGERFLOW_BROKER"} <= set(settings)
    assert urlsplit(settings["LEDGERFLOW_DB"]).password == PLACEHOLDER


# --------------------------------------------------------------------------------------------
# The image
# --------------------------------------------------------------------------------------------


def test_deploy_dockerfile_installs_the_postgres_extra_as_a_non_root_user() -> None:
    instructions = dockerfile_instructions(DOCKERFILE)
    final = final_stage(instructions)
    installs = [
        arguments
        for keyword, arguments in final
        if keyword == "RUN" and re.search(r"\bpip install\b", arguments)
    ]
    assert any("ledgerflow[postgres]" in run.replace('"', "") for run in installs), installs
    # the plugin comes in when asked for, from the same checkout
    assert any("ledgerflow-redis" in run for run in installs), installs

    users = [arguments for keyword, arguments in final if keyword == "USER"]
    assert users, "the image runs as root"
    user = users[-1].split(":", 1)[0]
    assert user not in ("root", "0")
    # numeric, so that Kubernetes' runAsNonRoot can check it; the manifests' pods run as it
    assert user.isdigit(), f"USER {users[-1]}: give the uid"
    for kind in ("Job", "Deployment"):
        assert pod_spec(the(kind))["securityContext"]["runAsUser"] == int(user), kind

    # what it copies from the checkout is there
    for keyword, arguments in instructions:
        if keyword == "COPY" and "--from" not in arguments:
            *sources, _target = [a for a in shlex.split(arguments) if not a.startswith("--")]
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
