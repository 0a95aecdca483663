"""ledgerflow-notify as installed: its entry point is discovered, and a workflow's
``ledgerflow.notify`` step sends through it, run by a Worker on a real SQLite ledger."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from ledgerflow import definitions
from ledgerflow.cli import cli
from ledgerflow.engine import Engine
from ledgerflow.model import StepFailed, StepSucceeded
from ledgerflow.notifiers import Notifier
from ledgerflow.plugins import Plugins
from ledgerflow.store.sql import SQLStore
from ledgerflow.worker import Worker

from ledgerflow_notify import EmailNotifier, WebhookNotifier, message_id_for
from ledgerflow_notify.testing import Reply, SMTPReceiver, WebhookReceiver

TENANT = "acme"


@pytest.fixture(autouse=True)
def _without_the_hosts_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``LEDGERFLOW_WEBHOOK_*`` or ``LEDGERFLOW_SMTP_*`` setting of the host leaks in."""
    for name in list(os.environ):
        if name.startswith(("LEDGERFLOW_WEBHOOK_", "LEDGERFLOW_SMTP_")):
            monkeypatch.delenv(name)


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """A real HTTP server on a free port that records requests and answers as told."""
    with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture
def smtp_receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[SMTPReceiver]:
    """A real SMTP server on a free port, with the ``LEDGERFLOW_SMTP_*`` settings to send to
    it."""
    with SMTPReceiver() as receiver:
        for name, value in receiver.environment().items():
            monkeypatch.setenv(name, value)
        yield receiver


def notifying_workflow(notifier: str, options: dict[str, Any]) -> dict[str, Any]:
    """A workflow whose one transition sends a notification through ``notifier``."""
    return {
        "name": "Notified",
        "version": 1,
        "initial_state": "new",
        "states": ["new", "done"],
        "terminal_states": ["done"],
        "transitions": [
            {
                "name": "announce",
                "from": "new",
                "to": "done",
                "on": "Announce",
                "steps": [
                    {
                        "id": "ping",
                        "action": "ledgerflow.notify",
                        "params": {
                            "channel": "approvers",
                            "message": {"expr": "payload.text"},
                            "notifier": notifier,
                            "options": options,
                        },
                    }
                ],
            }
        ],
    }


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """An SQLite ledger in a temporary file, its schema up to date."""
    url = f"sqlite:///{tmp_path}/ledger.db"
    store = SQLStore(url)
    store.upgrade()
    store.close()
    return url


@pytest.fixture
def notify_engine(sqlite_url: str) -> Iterator[Engine]:
    """An engine on ``sqlite_url`` with the installed plugins loaded, as by default."""
    engine = Engine(sqlite_url)
    yield engine
    engine.close()


def announce(engine: Engine, notifier: str, options: dict[str, Any]) -> tuple[str, str]:
    """Register the workflow, start an execution, send it ``Announce`` and process it;
    returns the execution's and the event's ids."""
    engine.register(
        definitions.compile_workflow(definitions.parse(notifying_workflow(notifier, options)))
    )
    execution_id = engine.create_execution("Notified", tenant=TENANT)
    event_id = engine.enqueue_event(
        execution_id, "Announce", tenant=TENANT, payload={"text": "invoice 42 is approved"}
    )
    Worker(engine, poll_interval=0.01).run_once()
    return execution_id, event_id


def step_record(engine: Engine, execution_id: str) -> StepSucceeded | StepFailed:
    (record,) = [
        h.record
        for h in engine.history(execution_id, tenant=TENANT)
        if isinstance(h.record, StepSucceeded | StepFailed) and h.record.step_id == "ping"
    ]
    return record


def test_the_entry_point_is_discovered_and_registers_both_notifiers() -> None:
    plugins = Plugins()
    notifiers = plugins.notifiers()

    assert isinstance(notifiers["webhook"], WebhookNotifier)
    assert isinstance(notifiers["email"], EmailNotifier)
    assert all(isinstance(notifiers[n], Notifier) for n in ("webhook", "email"))
    (info,) = [i for i in plugins.describe() if i.name == "notify"]
    assert (info.source, info.distribution, info.version) == (
        "entry point",
        "ledgerflow-notify",
        "0.1.0",
    )
    assert info.registered == {"notifiers": ("webhook", "email")}
    assert info.hooks == ("ledgerflow_register_notifiers",)
    assert info.errors == ()


def test_ledgerflow_plugins_lists_it(sqlite_url: str) -> None:
    outcome = CliRunner().invoke(cli, ["--db", sqlite_url, "plugins", "--json"])

    assert outcome.exit_code == 0, outcome.output
    (listed,) = [p for p in json.loads(outcome.output) if p["name"] == "notify"]
    assert listed["distribution"] == "ledgerflow-notify"
    assert listed["registered"] == {"notifiers": ["webhook", "email"]}
    assert listed["errors"] == []


def test_a_webhook_step_records_the_delivery_under_the_idempotency_key_the_receiver_got(
    notify_engine: Engine, webhook_receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEDGERFLOW_WEBHOOK_SECRET", "s3cret")
    webhook_receiver.reply(Reply(status=503), Reply(status=202))
    execution_id, event_id = announce(notify_engine, "webhook", {"url": webhook_receiver.url})

    record = step_record(notify_engine, execution_id)
    assert isinstance(record, StepSucceeded)
    key = f"{execution_id}:{event_id}:ping"
    assert record.result == {
        "notifier": "webhook",
        "url": webhook_receiver.url,
        "status": 202,
        "attempts": 2,
        "idempotency_key": key,
    }
    first, second = webhook_receiver.requests
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"] == key
    body = second.json()
    assert (body["idempotency_key"], body["execution_id"], body["event_id"]) == (
        key,
        execution_id,
        event_id,
    )
    assert (body["channel"], body["message"], body["tenant"]) == (
        "approvers",
        "invoice 42 is approved",
        TENANT,
    )
    assert notify_engine.get_execution(execution_id, tenant=TENANT).state == "done"


def test_an_email_step_records_the_message_id_the_server_got(
    notify_engine: Engine, smtp_receiver: SMTPReceiver
) -> None:
    execution_id, event_id = announce(
        notify_engine, "email", {"to": ["ann@example.com"], "subject": "Invoice 42"}
    )

    record = step_record(notify_engine, execution_id)
    assert isinstance(record, StepSucceeded)
    key = f"{execution_id}:{event_id}:ping"
    assert record.result == {
        "notifier": "email",
        "to": ["ann@example.com"],
        "message_id": message_id_for(key),
        "idempotency_key": key,
    }
    (mail,) = smtp_receiver.mails
    assert mail.message["X-Ledgerflow-Idempotency-Key"] == key
    assert mail.message["Message-ID"] == message_id_for(key)
    assert mail.message["Subject"] == "Invoice 42"
    assert mail.message.get_content().strip() == "invoice 42 is approved"


def test_a_refused_webhook_fails_the_step_with_the_status_in_the_ledger(
    notify_engine: Engine, webhook_receiver: WebhookReceiver
) -> None:
    webhook_receiver.reply(Reply(status=410, body=b"this hook is gone"))
    execution_id, _ = announce(notify_engine, "webhook", {"url": webhook_receiver.url})

    record = step_record(notify_engine, execution_id)
    assert isinstance(record, StepFailed)
    assert "refused with HTTP 410" in record.error
    assert "this hook is gone" in record.error
    assert len(webhook_receiver.requests) == 1


def test_a_step_without_a_url_fails_with_a_clear_error_and_sends_nothing(
    notify_engine: Engine,
) -> None:
    execution_id, _ = announce(notify_engine, "webhook", {})

    record = step_record(notify_engine, execution_id)
    assert isinstance(record, StepFailed)
    assert "options.url: no URL to post to" in record.error
    assert "LEDGERFLOW_WEBHOOK_URL" in record.error
