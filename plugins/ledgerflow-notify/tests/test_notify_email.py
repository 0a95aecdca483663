"""The email notifier against a real SMTP server (aiosmtpd): the message it sends, when it tries
again, and the errors it gives."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from ledgerflow.errors import InvalidParametersError
from ledgerflow.registry import ActionContext

from ledgerflow_notify import DeliveryError, EmailNotifier, NotifierConfigurationError
from ledgerflow_notify.testing import SMTPReceiver


@pytest.fixture(autouse=True)
def _without_the_hosts_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``LEDGERFLOW_WEBHOOK_*`` or ``LEDGERFLOW_SMTP_*`` setting of the host leaks in."""
    for name in list(os.environ):
        if name.startswith(("LEDGERFLOW_WEBHOOK_", "LEDGERFLOW_SMTP_")):
            monkeypatch.delenv(name)


@pytest.fixture
def smtp_receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[SMTPReceiver]:
    """A real SMTP server on a free port, with the ``LEDGERFLOW_SMTP_*`` settings to send to
    it."""
    with SMTPReceiver() as receiver:
        for name, value in receiver.environment().items():
            monkeypatch.setenv(name, value)
        yield receiver


@pytest.fixture
def notify_context() -> ActionContext:
    """The context of a step ``ping`` of an execution ``ex-1``, tenant ``acme``."""
    return ActionContext(
        idempotency_key="ex-1:ev-1:ping",
        execution_id="ex-1",
        tenant="acme",
        event_id="ev-1",
        step_id="ping",
    )


def quick() -> EmailNotifier:
    """A notifier whose backoff is short enough for tests."""
    return EmailNotifier(initial_wait=0.01, max_wait=0.05)


def test_the_email_carries_a_message_id_derived_from_the_idempotency_key(
    smtp_receiver: SMTPReceiver, notify_context: ActionContext
) -> None:
    result = quick().send(
        "approvers",
        "Invoice 42 (1 200 EUR) waits for your approval.",
        {"to": "Ann Manager <ann@example.com>"},
        notify_context,
    )

    expected_id = f"<{hashlib.sha256(b'ex-1:ev-1:ping').hexdigest()[:32]}@ledgerflow>"
    assert result == {
        "notifier": "email",
        "to": ["ann@example.com"],
        "message_id": expected_id,
        "idempotency_key": "ex-1:ev-1:ping",
    }
    (mail,) = smtp_receiver.mails
    assert mail.mail_from == "ledgerflow@example.com"
    assert mail.rcpt_tos == ("ann@example.com",)
    message = mail.message
    assert message["Message-ID"] == expected_id
    assert message["X-Ledgerflow-Idempotency-Key"] == "ex-1:ev-1:ping"
    assert message["Subject"] == "[approvers] notification"
    assert message["From"] == "Ledgerflow <ledgerflow@example.com>"
    assert message["To"] == "Ann Manager <ann@example.com>"
    assert message["Date"]
    assert message.get_content().strip() == "Invoice 42 (1 200 EUR) waits for your approval."


def test_a_repeat_of_the_same_step_sends_the_same_message_id(
    smtp_receiver: SMTPReceiver, notify_context: ActionContext
) -> None:
    notifier = quick()
    first = notifier.send("ops", "hello", {"to": "ops@example.com"}, notify_context)
    again = notifier.send("ops", "hello", {"to": "ops@example.com"}, notify_context)
    assert isinstance(first, dict)
    assert isinstance(again, dict)
    assert first["message_id"] == again["message_id"]
    assert [m.message["Message-ID"] for m in smtp_receiver.mails] == [first["message_id"]] * 2


def test_recipients_may_be_a_list_or_a_comma_separated_string_and_the_subject_is_an_option(
    smtp_receiver: SMTPReceiver, notify_context: ActionContext
) -> None:
    options = {
        "to": ["ann@example.com", "Bob <bob@example.org>, carol@example.net", "ann@example.com"],
        "subject": "Über-urgent: invoice 42",
    }
    result = quick().send("ops", "hello", options, notify_context)

    assert isinstance(result, dict)
    assert result["to"] == ["ann@example.com", "bob@example.org", "carol@example.net"]
    (mail,) = smtp_receiver.mails
    assert mail.rcpt_tos == ("ann@example.com", "bob@example.org", "carol@example.net")
    assert mail.message["Subject"] == "Über-urgent: invoice 42"


def test_a_4xx_reply_is_tried_again_and_the_message_then_delivered(
    smtp_receiver: SMTPReceiver, notify_context: ActionContext
) -> None:
    smtp_receiver.reply_to_data("451 4.3.0 Try again later", "421 4.7.0 Busy")
    result = quick().send("ops", "hello", {"to": "ops@example.com"}, notify_context)

    assert isinstance(result, dict)
    assert smtp_receiver.data_commands == 3
    assert len(smtp_receiver.mails) == 1
    assert smtp_receiver.mails[0].message["Message-ID"] == result["message_id"]


def test_4xx_replies_are_given_up_after_the_attempts_allowed(
    smtp_receiver: SMTPReceiver, notify_context: ActionContext
) -> None:
    smtp_receiver.reply_to_data(*["451 4.3.0 Try again later"] * 3)
    with pytest.raises(DeliveryError) as raised:
        quick().send("ops", "hello", {"to": "ops@example.com", "attempts": 2}, notify_context)

    assert smtp_receiver.data_commands == 2
    assert smtp_receiver.mails == []
    error = raised.value
    assert (error.status, error.attempts, error.transient) == (451, 2, True)
    assert "failed after 2 attempts, the last with reply 451 4.3.0 Try again later" in str(error)


def test_a_5xx_reply_fails_at_once(
    smtp_receiver: SMTPReceiver, notify_context: ActionContext
) -> None:
    smtp_receiver.reply_to_data("554 5.7.1 Message rejected as spam")
    with pytest.raises(DeliveryError) as raised:
        quick().send("ops", "hello", {"to": "ops@example.com"}, notify_context)

    assert smtp_receiver.data_commands == 1
    error = raised.value
    assert (error.status, error.attempts, error.transient) == (554, 1, False)
    assert "was refused by 127.0.0.1:" in str(error)
    assert "554 5.7.1 Message rejected as spam" in str(error)


def test_a_recipient_refused_among_accepted_ones_is_recorded_in_the_result(
    smtp_receiver: SMTPReceiver, notify_context: ActionContext
) -> None:
    smtp_receiver.refuse("gone@example.com")
    result = quick().send(
        "ops", "hello", {"to": ["ops@example.com", "gone@example.com"]}, notify_context
    )

    assert isinstance(result, dict)
    assert result["to"] == ["ops@example.com", "gone@example.com"]
    assert result["refused"] == {"gone@example.com": "550 5.1.1 No such user"}
    (mail,) = smtp_receiver.mails
    assert mail.rcpt_tos == ("ops@example.com",)


def test_every_recipient_refused_fails_at_once(
    smtp_receiver: SMTPReceiver, notify_context: ActionContext
) -> None:
    smtp_receiver.refuse("gone@example.com")
    with pytest.raises(DeliveryError) as raised:
        quick().send("ops", "hello", {"to": "gone@example.com"}, notify_context)

    assert raised.value.attempts == 1
    assert "every recipient refused: gone@example.com: 550 5.1.1 No such user" in str(raised.value)


def test_a_server_that_does_not_listen_is_tried_again_and_then_reported(
    notify_context: ActionContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed below: nobody listens there
    monkeypatch.setenv("LEDGERFLOW_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("LEDGERFLOW_SMTP_PORT", str(port))
    monkeypatch.setenv("LEDGERFLOW_SMTP_FROM", "ledgerflow@example.com")
    with pytest.raises(DeliveryError) as raised:
        quick().send("ops", "hello", {"to": "ops@example.com", "attempts": 3}, notify_context)

    error = raised.value
    assert (error.attempts, error.status, error.transient) == (3, None, True)
    assert "ConnectionRefusedError" in str(error)
    assert f"via 127.0.0.1:{port}" in str(error)


def test_a_missing_sender_is_a_clear_error(
    smtp_receiver: SMTPReceiver, notify_context: ActionContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LEDGERFLOW_SMTP_FROM")
    with pytest.raises(NotifierConfigurationError) as raised:
        quick().send("ops", "hello", {"to": "ops@example.com"}, notify_context)

    assert str(raised.value).startswith("email notifier: LEDGERFLOW_SMTP_FROM: not set")
    assert isinstance(raised.value, InvalidParametersError)
    assert smtp_receiver.data_commands == 0


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        pytest.param({}, "options.to: required", id="missing"),
        pytest.param({"to": []}, "options.to: no recipient given", id="empty-list"),
        pytest.param({"to": 42}, "options.to: must be an address or a list", id="not-a-string"),
        pytest.param({"to": "not an address"}, "options.to: not an email address", id="no-at-sign"),
        pytest.param(
            {"to": ["ok@example.com", "a@b.com c@d.com"]},
            "options.to: not an email address (or a comma-separated list of them): "
            "'a@b.com c@d.com'",
            id="space-separated",
        ),
        pytest.param(
            {"to": "ops@example.com\r\nBcc: everyone@example.com"},
            "options.to: a line break is not allowed",
            id="header-injection",
        ),
        pytest.param(
            {"to": "ops@example.com", "subject": "hi\nBcc: x@example.com"},
            "options.subject: a line break is not allowed",
            id="subject-injection",
        ),
        pytest.param(
            {"to": "ops@example.com", "cc": "x@example.com"},
            "options.cc: unknown option (known: attempts, subject, timeout, to)",
            id="unknown-option",
        ),
    ],
)
def test_bad_recipients_and_options_are_refused_before_anything_is_sent(
    options: dict[str, Any],
    expected: str,
    smtp_receiver: SMTPReceiver,
    notify_context: ActionContext,
) -> None:
    with pytest.raises(NotifierConfigurationError) as raised:
        quick().send("ops", "hello", options, notify_context)

    assert expected in str(raised.value)
    assert smtp_receiver.data_commands == 0


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        pytest.param(
            {"LEDGERFLOW_SMTP_PORT": "smtp"},
            "LEDGERFLOW_SMTP_PORT: must be a port number (1 to 65535), not 'smtp'",
            id="port",
        ),
        pytest.param(
            {"LEDGERFLOW_SMTP_USER": "mailer"},
            "LEDGERFLOW_SMTP_PASSWORD: not set, while LEDGERFLOW_SMTP_USER is",
            id="user-without-password",
        ),
        pytest.param(
            {"LEDGERFLOW_SMTP_STARTTLS": "maybe"},
            "LEDGERFLOW_SMTP_STARTTLS: must be 1 or 0, not 'maybe'",
            id="starttls",
        ),
        pytest.param(
            {"LEDGERFLOW_SMTP_FROM": "two@example.com, senders@example.com"},
            "LEDGERFLOW_SMTP_FROM: must be one address",
            id="two-senders",
        ),
    ],
)
def test_bad_server_settings_are_clear_errors(
    environment: dict[str, str],
    expected: str,
    smtp_receiver: SMTPReceiver,
    notify_context: ActionContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(NotifierConfigurationError) as raised:
        quick().send("ops", "hello", {"to": "ops@example.com"}, notify_context)

    assert expected in str(raised.value)
