"""The ``webhook`` notifier: POST the notification as JSON to a URL, signed, retried, with the
step's idempotency key."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime

import httpx
from ledgerflow.model import JSON
from ledgerflow.registry import ActionContext

from ledgerflow_notify._backoff import TransientFailure, backoff_wait, retrying
from ledgerflow_notify._options import (
    attempts_option,
    one_line,
    plural,
    timeout_option,
    unknown_keys,
)
from ledgerflow_notify.errors import DeliveryError, NotifierConfigurationError
from ledgerflow_notify.signing import SIGNATURE_HEADER, signature_header

__all__ = ["SECRET_ENV", "URL_ENV", "WebhookNotifier"]

URL_ENV = "LEDGERFLOW_WEBHOOK_URL"
"""The environment variable holding the URL to post to when a step gives no ``options.url``."""

SECRET_ENV = "LEDGERFLOW_WEBHOOK_SECRET"
"""The environment variable holding the signing secret when a step names no
``options.secret_env``."""

OPTIONS = ("url", "secret_env", "attempts", "timeout")
"""The options a step may give the ``webhook`` notifier."""


class WebhookNotifier:
    """POSTs ``{"channel", "message", "execution_id", "tenant", "event_id", "step_id",
    "idempotency_key", "sent_at"}`` as JSON to ``options.url`` (else ``$LEDGERFLOW_WEBHOOK_URL``).

    Every request carries ``Idempotency-Key`` (the step's key: the same on every retry and
    redelivery, so the receiver can drop a repeat) and, when a secret is set
    (``$LEDGERFLOW_WEBHOOK_SECRET``, or the variable named by ``options.secret_env``),
    ``X-Ledgerflow-Signature`` (see :func:`ledgerflow_notify.verify_signature`).

    A refused connection, a timeout (``options.timeout`` seconds, default 10), a 429 or a 5xx is
    tried again, up to ``options.attempts`` tries in all (default 3), after an exponential
    backoff with jitter from ``initial_wait`` up to ``max_wait`` seconds, or after the
    ``Retry-After`` seconds the receiver asked for, at most ``max_retry_after``. Any other
    status outside 2xx fails at once. The environment is read at each send.
    """

    def __init__(
        self, *, initial_wait: float = 0.2, max_wait: float = 2.0, max_retry_after: float = 10.0
    ) -> None:
        self.initial_wait = initial_wait
        self.max_wait = max_wait
        self.max_retry_after = max_retry_after

    def send(
        self, channel: str, message: str, options: Mapping[str, JSON], context: ActionContext
    ) -> JSON:
        """Deliver the notification; returns ``{"notifier": "webhook", "url", "status",
        "attempts", "idempotency_key"}`` (a password in the URL is masked).

        Raises :class:`~ledgerflow_notify.NotifierConfigurationError` for a missing or bad
        option or setting, :class:`~ledgerflow_notify.DeliveryError` when the receiver refused
        the notification or every attempt failed.
        """
        problems = unknown_keys({k: v for k, v in options.items() if k != "secret"}, OPTIONS)
        url = _url(options, problems)
        secret = _secret(options, problems)
        attempts = attempts_option(options, problems)
        timeout = timeout_option(options, problems)
        if problems or url is None:
            raise NotifierConfigurationError("webhook", problems)

        body = json.dumps(
            {
                "channel": channel,
                "message": message,
                "execution_id": context.execution_id,
                "tenant": context.tenant,
                "event_id": context.event_id,
                "step_id": context.step_id,
                "idempotency_key": context.idempotency_key,
                "sent_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            },
            ensure_ascii=False,
            separators=(",", ":"),
            sort_keys=True,
        ).encode("utf-8")
        shown = _shown(url)
        tries = 0
        try:
            with httpx.Client(timeout=timeout, follow_redirects=False) as client:
                for attempt in retrying(
                    attempts, backoff_wait(self.initial_wait, self.max_wait, self.max_retry_after)
                ):
                    with attempt:
                        tries = attempt.retry_state.attempt_number
                        response = _post(client, url, body, secret, context, timeout)
        except TransientFailure as failure:
            raise DeliveryError(
                f"webhook notification of channel {channel!r} to {shown} failed after "
                f"{plural(tries, 'attempt')}, the last with {failure.reason}",
                notifier="webhook",
                target=shown,
                attempts=tries,
                status=failure.status,
                transient=True,
            ) from failure
        if not response.is_success:
            excerpt = one_line(response.text) or "(empty body)"
            raise DeliveryError(
                f"webhook notification of channel {channel!r} to {shown} was refused with "
                f"HTTP {response.status_code} (not tried again): {excerpt}",
                notifier="webhook",
                target=shown,
                attempts=tries,
                status=response.status_code,
            )
        return {
            "notifier": "webhook",
            "url": shown,
            "status": response.status_code,
            "attempts": tries,
            "idempotency_key": context.idempotency_key,
        }


def _post(
    client: httpx.Client,
    url: httpx.URL,
    body: bytes,
    secret: str | None,
    context: ActionContext,
    timeout: float,
) -> httpx.Response:
    """One attempt; raises :class:`TransientFailure` for what is worth another."""
    headers = {
        "Content-Type": "application/json",
        "Idempotency-Key": context.idempotency_key,
        "User-Agent": "ledgerflow-notify",
    }
    if secret is not None:
        # signed per attempt: the body is the same, the timestamp is fresh
        headers[SIGNATURE_HEADER] = signature_header(body, secret)
    try:
        response = client.post(url, content=body, headers=headers)
    except httpx.TimeoutException as exc:
        raise TransientFailure(f"a timeout after {timeout:g} s ({type(exc).__name__})") from exc
    except httpx.TransportError as exc:
        raise TransientFailure(f"{type(exc).__name__}: {exc}") from exc
    if response.status_code == 429 or response.status_code >= 500:
        raise TransientFailure(
            f"HTTP {response.status_code}: {one_line(response.text) or '(empty body)'}",
            status=response.status_code,
            retry_after=_retry_after(response),
        )
    return response


def _retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds; an HTTP date (or nonsense) is left to the backoff."""
    value = response.headers.get("Retry-After", "").strip()
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _url(options: Mapping[str, JSON], problems: list[str]) -> httpx.URL | None:
    raw = options.get("url")
    where = "options.url"
    if raw is None:
        raw = os.environ.get(URL_ENV) or None
        where = URL_ENV
    if raw is None:
        problems.append(
            f"options.url: no URL to post to: give options.url, or set {URL_ENV} in the "
            "worker's environment"
        )
        return None
    if not isinstance(raw, str):
        problems.append(f"options.url: must be a string, not {raw!r}")
        return None
    try:
        url = httpx.URL(raw)
    except httpx.InvalidURL as exc:
        problems.append(f"{where}: not a valid URL ({exc})")
        return None
    if url.scheme not in ("http", "https") or not url.host:
        problems.append(f"{where}: must be an absolute http:// or https:// URL, not {raw!r}")
        return None
    return url


def _secret(options: Mapping[str, JSON], problems: list[str]) -> str | None:
    if "secret" in options:
        problems.append(
            "options.secret: a secret must not be given in options, which are recorded in the "
            "ledger: put it in an environment variable of the worker and give that variable's "
            "name as options.secret_env"
        )
    name = options.get("secret_env")
    if name is None:
        return os.environ.get(SECRET_ENV) or None
    if not isinstance(name, str) or not name:
        problems.append(f"options.secret_env: must name an environment variable, not {name!r}")
        return None
    secret = os.environ.get(name)
    if not secret:
        problems.append(
            f"options.secret_env: the environment variable {name} is not set (or empty) in "
            "the worker's environment"
        )
        return None
    return secret


def _shown(url: httpx.URL) -> str:
    """The URL as recorded and reported: a password in it is masked."""
    return str(url.copy_with(username=url.username, password="***")) if url.password else str(url)
