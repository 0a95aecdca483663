"""The webhook notifier against a real HTTP server: what it sends, how it signs, when it tries
again, and the errors it gives."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from ledgerflow.errors import InvalidParametersError
from ledgerflow.registry import ActionContext

from ledgerflow_notify import (
    DeliveryError,
    NotifierConfigurationError,
    WebhookNotifier,
    verify_signature,
)
from ledgerflow_notify.testing import Reply, WebhookReceiver

SECRET = "s3cret-for-tests"


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
def notify_context() -> ActionContext:
    """The context of a step ``ping`` of an execution ``ex-1``, tenant ``acme``."""
    return ActionContext(
        idempotency_key="ex-1:ev-1:ping",
        execution_id="ex-1",
        tenant="acme",
        event_id="ev-1",
        step_id="ping",
    )


def quick() -> WebhookNotifier:
    """A notifier whose backoff is short enough for tests."""
    return WebhookNotifier(initial_wait=0.01, max_wait=0.05, max_retry_after=0.3)


def test_the_notification_is_posted_as_json_with_its_idempotency_key_and_a_valid_signature(
    webhook_receiver: WebhookReceiver,
    notify_context: ActionContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LEDGERFLOW_WEBHOOK_SECRET", SECRET)
    result = quick().send(
        "ops", "invoice 42 approved", {"url": webhook_receiver.url}, notify_context
    )

    assert result == {
        "notifier": "webhook",
        "url": webhook_receiver.url,
        "status": 200,
        "attempts": 1,
        "idempotency_key": "ex-1:ev-1:ping",
    }
    (request,) = webhook_receiver.requests
    assert request.method == "POST"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["idempotency-key"] == "ex-1:ev-1:ping"
    body = request.json()
    sent_at = body.pop("sent_at")
    assert body == {
        "channel": "ops",
        "message": "invoice 42 approved",
        "execution_id": "ex-1",
        "tenant": "acme",
        "event_id": "ev-1",
        "step_id": "ping",
        "idempotency_key": "ex-1:ev-1:ping",
    }
    assert sent_at.endswith("+00:00")
    header = request.headers["x-ledgerflow-signature"]
    assert header.startswith("t=")
    assert verify_signature(request.body, header, SECRET)


def test_a_tampered_body_a_wrong_secret_or_a_stale_signature_is_refused(
    webhook_receiver: WebhookReceiver,
    notify_context: ActionContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LEDGERFLOW_WEBHOOK_SECRET", SECRET)
    quick().send("ops", "pay 100 EUR", {"url": webhook_receiver.url}, notify_context)
    (request,) = webhook_receiver.requests
    header = request.headers["x-ledgerflow-signature"]
    signed_at = int(header.split(",")[0].removeprefix("t="))

    assert verify_signature(request.body, header, SECRET, now=signed_at + 299)
    assert not verify_signature(request.body.replace(b"100", b"900"), header, SECRET)
    assert not verify_signature(request.body, header, "another secret")
    assert not verify_signature(request.body, header, SECRET, now=signed_at + 301)
    assert not verify_signature(request.body, header, SECRET, now=signed_at - 301)
    assert verify_signature(request.body, header, SECRET, tolerance=10_000, now=signed_at + 301)


def test_the_secret_is_read_from_the_variable_named_by_secret_env(
    webhook_receiver: WebhookReceiver,
    notify_context: ActionContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LEDGERFLOW_WEBHOOK_SECRET", "the default secret")
    monkeypatch.setenv("PARTNER_HOOK_SECRET", "the partner's secret")
    options = {"url": webhook_receiver.url, "secret_env": "PARTNER_HOOK_SECRET"}
    quick().send("ops", "hello", options, notify_context)
    (request,) = webhook_receiver.requests
    header = request.headers["x-ledgerflow-signature"]
    assert verify_signature(request.body, header, "the partner's secret")
    assert not verify_signature(request.body, header, "the default secret")


def test_without_a_secret_nothing_is_signed_and_the_url_may_come_from_the_environment(
    webhook_receiver: WebhookReceiver,
    notify_context: ActionContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LEDGERFLOW_WEBHOOK_URL", webhook_receiver.url)
    result = quick().send("ops", "hello", {}, notify_context)
    assert isinstance(result, dict)
    assert result["url"] == webhook_receiver.url
    (request,) = webhook_receiver.requests
    assert "x-ledgerflow-signature" not in request.headers
    assert request.headers["idempotency-key"] == "ex-1:ev-1:ping"


def test_503_twice_then_200_is_delivered_on_the_third_attempt_with_the_same_body_and_key(
    webhook_receiver: WebhookReceiver, notify_context: ActionContext
) -> None:
    webhook_receiver.reply(Reply(status=503), Reply(status=503), Reply(status=200))
    result = quick().send("ops", "hello", {"url": webhook_receiver.url}, notify_context)

    assert isinstance(result, dict)
    assert (result["status"], result["attempts"]) == (200, 3)
    requests = webhook_receiver.requests
    assert len(requests) == 3
    assert {r.headers["idempotency-key"] for r in requests} == {"ex-1:ev-1:ping"}
    assert len({r.body for r in requests}) == 1


def test_429_and_5xx_are_given_up_after_the_attempts_allowed(
    webhook_receiver: WebhookReceiver, notify_context: ActionContext
) -> None:
    webhook_receiver.reply(Reply(status=429), Reply(status=502, body=b"bad gateway"))
    with pytest.raises(DeliveryError) as raised:
        quick().send("ops", "hello", {"url": webhook_receiver.url, "attempts": 2}, notify_context)

    assert len(webhook_receiver.requests) == 2
    error = raised.value
    assert (error.status, error.attempts, error.transient) == (502, 2, True)
    assert "failed after 2 attempts" in str(error)
    assert "HTTP 502: bad gateway" in str(error)


def test_retry_after_seconds_are_honoured_up_to_the_cap(
    webhook_receiver: WebhookReceiver, notify_context: ActionContext
) -> None:
    webhook_receiver.reply(
        Reply(status=429, headers={"Retry-After": "0.2"}),
        Reply(status=503, headers={"Retry-After": "3600"}),  # capped at 0.3 s
        Reply(status=200),
    )
    quick().send("ops", "hello", {"url": webhook_receiver.url}, notify_context)

    first, second, third = (r.received_at for r in webhook_receiver.requests)
    assert 0.18 <= second - first < 1.5
    assert 0.28 <= third - second < 1.5


def test_a_400_fails_at_once_with_the_status_and_an_excerpt_of_the_body(
    webhook_receiver: WebhookReceiver, notify_context: ActionContext
) -> None:
    webhook_receiver.reply(Reply(status=400, body=b'{"error": "channel\\nunknown"}' + b"x" * 500))
    with pytest.raises(DeliveryError) as raised:
        quick().send("ops", "hello", {"url": webhook_receiver.url}, notify_context)

    assert len(webhook_receiver.requests) == 1
    error = raised.value
    assert (error.status, error.attempts, error.transient) == (400, 1, False)
    message = str(error)
    assert "refused with HTTP 400" in message
    assert "channel 'ops'" in message
    assert '{"error": "channel\\nunknown"}' in message
    assert len(message) < 400  # an excerpt, not the whole body


def test_a_receiver_that_never_answers_times_out_on_each_attempt(
    webhook_receiver: WebhookReceiver, notify_context: ActionContext
) -> None:
    webhook_receiver.reply(Reply(hang=True), Reply(hang=True))
    started = time.monotonic()
    with pytest.raises(DeliveryError) as raised:
        quick().send(
            "ops",
            "hello",
            {"url": webhook_receiver.url, "timeout": 0.2, "attempts": 2},
            notify_context,
        )

    assert time.monotonic() - started < 2
    assert len(webhook_receiver.requests) == 2
    assert (raised.value.status, raised.value.attempts) == (None, 2)
    assert "the last with a timeout after 0.2 s" in str(raised.value)


def test_a_refused_connection_is_tried_again_and_then_reported(
    notify_context: ActionContext,
) -> None:
    receiver = WebhookReceiver().start()
    url = receiver.url
    receiver.stop()  # nobody listens on its port now
    with pytest.raises(DeliveryError) as raised:
        quick().send("ops", "hello", {"url": url, "attempts": 2}, notify_context)

    assert raised.value.attempts == 2
    assert "ConnectError" in str(raised.value)


def test_a_password_in_the_url_is_masked_in_the_result(
    webhook_receiver: WebhookReceiver, notify_context: ActionContext
) -> None:
    url = webhook_receiver.url.replace("http://", "http://hook:hunter2@")
    result = quick().send("ops", "hello", {"url": url}, notify_context)
    assert isinstance(result, dict)
    assert "hunter2" not in result["url"]
    assert result["url"] == webhook_receiver.url.replace("http://", "http://hook:***@")
    (request,) = webhook_receiver.requests
    assert request.headers["authorization"].startswith("Basic ")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        pytest.param(
            {},
            "options.url: no URL to post to: give options.url, or set LEDGERFLOW_WEBHOOK_URL",
            id="no-url",
        ),
        pytest.param(
            {"url": "ftp://example.com/x"},
            "options.url: must be an absolute http:// or https:// URL",
            id="not-http",
        ),
        pytest.param(
            {"url": "http://example.com", "secret": "abc"},
            "options.secret: a secret must not be given in options, which are recorded in "
            "the ledger",
            id="secret-in-options",
        ),
        pytest.param(
            {"url": "http://example.com", "secret_env": "NOT_SET_ANYWHERE"},
            "options.secret_env: the environment variable NOT_SET_ANYWHERE is not set",
            id="secret-env-unset",
        ),
        pytest.param(
            {"url": "http://example.com", "attempts": 0},
            "options.attempts: must be an integer from 1 to 10, not 0",
            id="attempts",
        ),
        pytest.param(
            {"url": "http://example.com", "timeout": "soon"},
            "options.timeout: must be a number of seconds",
            id="timeout",
        ),
        pytest.param(
            {"url": "http://example.com", "retries": 3},
            "options.retries: unknown option (known: attempts, secret_env, timeout, url)",
            id="unknown-option",
        ),
    ],
)
def test_bad_or_missing_settings_are_clear_errors_that_are_never_retried(
    options: dict[str, Any], expected: str, notify_context: ActionContext
) -> None:
    with pytest.raises(NotifierConfigurationError) as raised:
        quick().send("ops", "hello", options, notify_context)
    assert str(raised.value).startswith("webhook notifier: ")
    assert expected in str(raised.value)
    # the engine fails a step at once on invalid parameters: trying again cannot mend them
    assert isinstance(raised.value, InvalidParametersError)


def test_every_problem_is_named_in_one_error(notify_context: ActionContext) -> None:
    with pytest.raises(NotifierConfigurationError) as raised:
        quick().send("ops", "hello", {"attempts": 99, "colour": "red"}, notify_context)
    assert [p.split(":")[0] for p in raised.value.problems] == [
        "options.colour",
        "options.url",
        "options.attempts",
    ]
