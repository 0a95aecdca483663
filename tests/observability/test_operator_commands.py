"""The operator's commands on a real SQLite file, run as a user runs them (a subprocess):
``status``, ``dead-letters retry --all`` / ``discard`` with their audit lines, and JSON logs
whose lines carry the execution, event, tenant and step a worker was on."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from apps import counting_app
from ledgerflow import definitions, logs
from ledgerflow.engine import Engine
from ledgerflow.worker import Worker

TESTS = Path(__file__).resolve().parents[1]
TENANT = "acme"


def cli(db: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """``ledgerflow --db DB ARGS`` in a subprocess, with the counting app importable."""
    return subprocess.run(
        [sys.executable, "-m", "ledgerflow", "--db", db, *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": str(TESTS)},
    )


@pytest.fixture
def db(tmp_path: Path) -> str:
    """A SQLite file with the counting app set up and, per execution of three: two hits, a
    close, and a hit after the end (rejected once decided)."""
    url = f"sqlite:///{tmp_path}/ops.db"
    engine = Engine(url)
    engine.store.upgrade()
    counting_app.setup(engine)
    for _ in range(3):
        x = engine.create_execution("Counting", tenant=TENANT)
        for n in range(2):
            engine.enqueue_event(x, "Hit", tenant=TENANT, payload={"n": n})
        engine.enqueue_event(x, "Close", tenant=TENANT)
        engine.enqueue_event(x, "Hit", tenant=TENANT, payload={"n": 9})
    engine.close()
    return url


def test_status_shows_the_queue_then_the_work_done(db: str) -> None:
    before = json.loads(cli(db, "status", "--json").stdout)
    assert before["queue"]["depth"] == 12
    assert before["queue"]["lag_seconds"] >= 0
    oldest = before["queue"]["oldest"]
    assert (oldest["event"], oldest["seq"], oldest["leased_by"]) == ("Hit", 2, None)
    assert before["executions"] == {"active": 3, "completed": 0, "failed": 0}
    assert before["throughput"]["enqueued"] == 12
    assert before["workers"]["list"] == []

    worked = cli(db, "--app", "apps.counting_app", "worker", "--until-idle")
    assert worked.returncode == 0, worked.stderr

    after = json.loads(cli(db, "status", "--json").stdout)
    assert after["queue"] == {"depth": 0, "lag_seconds": None, "oldest": None}
    assert after["throughput"]["decided"] == {"processed": 9, "rejected": 3}
    assert after["throughput"]["decided_per_second"] == pytest.approx(12 / 60, abs=0.001)
    assert after["executions"] == {"active": 0, "completed": 3, "failed": 0}
    assert [w["state"] for w in after["workers"]["list"]] == ["stopped"]
    assert after["workers"]["stopped"] == 1

    text = cli(db, "status")
    assert text.returncode == 0, text.stderr
    for shown in ("0 events waiting", "9 processed, 3 rejected", "3 completed", "stopped"):
        assert shown in text.stdout


def test_status_watch_prints_one_document_per_refresh(db: str) -> None:
    run = cli(db, "status", "--watch", "--json", "--count", "2", "--interval", "0.1")
    assert run.returncode == 0, run.stderr
    screens = [json.loads(line) for line in run.stdout.splitlines()]
    assert [s["queue"]["depth"] for s in screens] == [12, 12]
    drawn = cli(db, "status", "--watch", "--count", "2", "--interval", "0.1")
    assert drawn.returncode == 0, drawn.stderr
    assert "12 events waiting" in drawn.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["status", "--count", "2"], "--count goes with --watch"),
        (["status", "--dead-after", "0"], "--dead-after"),
        (["status", "--interval", "soon"], "--interval"),
        (["--log-format", "xml", "status"], "--log-format"),
    ],
)
def test_status_refuses_bad_options(db: str, args: list[str], message: str) -> None:
    run = cli(db, *args)
    assert run.returncode == 2
    assert message in run.stderr


def test_status_without_a_schema_says_what_to_do(tmp_path: Path) -> None:
    run = cli(f"sqlite:///{tmp_path}/empty.db", "status")
    assert run.returncode == 2
    assert "ledgerflow db upgrade" in run.stderr


def _dead_letters(db: str) -> tuple[list[str], str]:
    engine = Engine(db)
    try:
        good = [
            engine.store.insert_dead_letter(
                transport="redis",
                transport_id=f"ledgerflow:dead-letters|{i}-0",
                message={"v": "1", "execution_id": f"e{i}", "tenant": TENANT, "event_id": f"v{i}"},
                reason="delivered 6 times without being acknowledged",
                deliveries=6,
                tenant=TENANT,
                execution_id=f"e{i}",
                event_id=f"v{i}",
            )
            for i in range(3)
        ]
        junk = engine.store.insert_dead_letter(
            transport="redis",
            transport_id="ledgerflow:dead-letters|9-0",
            message={"junk": "?"},
            reason="malformed message: no field execution_id",
            deliveries=1,
        )
    finally:
        engine.close()
    return good, junk


def test_retry_all_retries_every_well_formed_dead_letter_with_progress_and_audit(
    db: str,
) -> None:
    good, junk = _dead_letters(db)
    assert json.loads(cli(db, "status", "--json").stdout)["dead_letters"] == 4
    run = cli(db, "--log-format", "json", "dead-letters", "retry", "--all", "--by", "ops-alice")
    assert run.returncode == 0, run.stderr
    assert "3 dead letter(s) retried" in run.stdout
    assert f"1 malformed dead letter(s) left, with nothing to retry (discard them): {junk}" in (
        run.stdout
    )
    lines = run.stderr.splitlines()
    assert "retrying dead letters: 3/3" in lines  # not a terminal: plain progress lines
    audits = [json.loads(line) for line in lines if line.startswith("{")]
    assert sorted(a["message"] for a in audits) == sorted(
        f"dead letter {i} retried by ops-alice" for i in good
    )
    assert {a["logger"] for a in audits} == {"ledgerflow.audit"}
    for dead_letter_id in good:
        shown = json.loads(cli(db, "dead-letters", "show", dead_letter_id).stdout)
        assert shown["settled_by"] == "ops-alice"
        assert shown["retried_at"] is not None
    left = json.loads(cli(db, "dead-letters", "list", "--json").stdout)
    assert [d["id"] for d in left] == [junk]
    assert json.loads(cli(db, "status", "--json").stdout)["dead_letters"] == 1
    nothing = cli(db, "dead-letters", "retry", "--all")
    assert "0 dead letter(s) retried" in nothing.stdout


@pytest.mark.parametrize("args", [[], ["some-id", "--all"]])
def test_retry_wants_one_id_or_all(db: str, args: list[str]) -> None:
    run = cli(db, "dead-letters", "retry", *args)
    assert (run.returncode, run.stderr.strip()) == (
        2,
        "error: name one dead letter ID, or give --all",
    )


def test_discard_asks_and_logs_who_and_why(db: str) -> None:
    _, junk = _dead_letters(db)
    declined = cli(db, "dead-letters", "discard", junk, stdin="n\n")
    assert declined.returncode == 1
    assert "malformed message: no field execution_id" in declined.stdout  # the question says why
    assert "discarded" not in declined.stderr

    done = cli(
        db, "dead-letters", "discard", junk, "--by", "ops-bob", "--reason", "garbage", stdin="y\n"
    )
    assert done.returncode == 0, done.stderr
    assert f"dead letter {junk} discarded" in done.stdout
    assert f"dead letter {junk} discarded by ops-bob: garbage (execution -, event -)" in done.stderr
    # the audit stays with the dead letter, too
    kept = json.loads(cli(db, "dead-letters", "show", junk).stdout)
    assert (kept["settled_by"], kept["settle_reason"]) == ("ops-bob", "garbage")
    assert kept["discarded_at"] is not None

    again = cli(db, "dead-letters", "discard", junk)  # asks nothing: refused at once
    assert (again.returncode, again.stderr.strip()) == (
        2,
        f"error: dead letter {junk} was already settled",
    )


# --------------------------------------------------------------------------------------------
# JSON logs
# --------------------------------------------------------------------------------------------

app_log = logging.getLogger("observability.app")

LOGGING = {
    "name": "Logging",
    "version": 1,
    "initial_state": "open",
    "states": ["open", "done"],
    "terminal_states": ["done"],
    "transitions": [
        {
            "name": "go",
            "from": "open",
            "to": "done",
            "on": "Go",
            "steps": [{"id": "say", "action": "obs.say", "params": {}}],
        }
    ],
}


def _say(params: dict[str, Any], context: object) -> dict[str, Any]:
    app_log.warning("saying hello")
    return {}


def test_json_log_lines_carry_what_the_worker_was_on(tmp_path: Path) -> None:
    engine = Engine(f"sqlite:///{tmp_path}/logs.db")
    engine.store.upgrade()
    engine.registry.register_simple_action("obs.say", "Log a line.", [], _say)
    engine.register(definitions.compile_workflow(definitions.parse(LOGGING)))
    x = engine.create_execution("Logging", tenant=TENANT)
    event_id = engine.enqueue_event(x, "Go", tenant=TENANT)
    out = io.StringIO()
    handler = logs.configure("json", level=logging.WARNING)
    handler.setStream(out)
    try:
        app_log.warning("before any work")
        Worker(engine, poll_interval=0.05).run(until_idle=True)
    finally:
        logging.getLogger().removeHandler(handler)
        engine.close()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    outside = next(line for line in lines if line["message"] == "before any work")
    assert not set(logs.FIELDS) & set(outside)
    said = next(line for line in lines if line["message"] == "saying hello")
    assert {k: said[k] for k in logs.FIELDS} == {
        "execution_id": x,
        "event_id": event_id,
        "tenant": TENANT,
        "step_id": "say",
    }
    assert (said["level"], said["logger"]) == ("warning", "observability.app")
    assert said["time"].endswith("+00:00")


def test_text_log_lines_stay_human() -> None:
    handler = logs.configure("text")
    out = io.StringIO()
    handler.setStream(out)
    try:
        with logs.bound(execution_id="x1"):
            app_log.warning("plain")
    finally:
        logging.getLogger().removeHandler(handler)
    assert out.getvalue().rstrip().endswith("WARNING observability.app: plain")


def test_an_exception_is_one_json_line() -> None:
    formatter = logs.JsonFormatter()
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "failed", None, exc_info=sys.exc_info()
        )
    text = formatter.format(record)
    assert "\n" not in text
    assert "RuntimeError: boom" in json.loads(text)["exception"]


def test_bad_log_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        logs.configure("xml")
    with pytest.raises(ValueError, match="unknown log field"), logs.bound(user="x"):
        pass


def test_bindings_nest_and_unwind() -> None:
    with logs.bound(execution_id="x1", tenant="t"):
        with logs.bound(step_id="s", execution_id="x2"):
            logs.begin_event("e1")
            assert logs.current() == {
                "execution_id": "x2",
                "event_id": "e1",
                "tenant": "t",
                "step_id": "s",
            }
            assert logs.event_started() is not None
        assert logs.current() == {"execution_id": "x1", "tenant": "t"}
        assert logs.event_started() is None
    assert logs.current() == {}
