"""The ``email`` notifier: send the notification by SMTP (the standard library's
:mod:`smtplib`, in the calling thread), with a Message-ID derived from the step's idempotency
key."""

from __future__ import annotations

import email.policy
import hashlib
import os
import smtplib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formataddr, formatdate, getaddresses

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

__all__ = [
    "FROM_ENV",
    "HOST_ENV",
    "IDEMPOTENCY_HEADER",
    "PASSWORD_ENV",
    "PORT_ENV",
    "STARTTLS_ENV",
    "USER_ENV",
    "EmailNotifier",
    "message_id_for",
]

HOST_ENV = "LEDGERFLOW_SMTP_HOST"
"""The SMTP server's host name (default ``localhost``)."""

PORT_ENV = "LEDGERFLOW_SMTP_PORT"
"""The SMTP server's port (default 25)."""

FROM_ENV = "LEDGERFLOW_SMTP_FROM"
"""The sender, ``ops@example.com`` or ``Ops <ops@example.com>``: required."""

USER_ENV = "LEDGERFLOW_SMTP_USER"
"""The user name to log in with (optional; needs :data:`PASSWORD_ENV` too)."""

PASSWORD_ENV = "LEDGERFLOW_SMTP_PASSWORD"
"""The password to log in with (optional; needs :data:`USER_ENV` too)."""

STARTTLS_ENV = "LEDGERFLOW_SMTP_STARTTLS"
"""``1`` to upgrade the connection with STARTTLS (verifying the server's certificate) before
logging in and sending."""

IDEMPOTENCY_HEADER = "X-Ledgerflow-Idempotency-Key"
"""The header carrying the step's idempotency key in every message."""

OPTIONS = ("to", "subject", "attempts", "timeout")
"""The options a step may give the ``email`` notifier."""

# Headers are folded only beyond RFC 5322's hard limit of 998 characters: a folded idempotency
# key (they are ~75 characters) comes back from some parsers with a leading space, and then no
# longer matches the key it stands for.
_POLICY = email.policy.default.clone(max_line_length=998)

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def message_id_for(idempotency_key: str) -> str:
    """The Message-ID of the notification sent under ``idempotency_key``:
    ``<first 32 hex digits of its SHA-256@ledgerflow>``. Every retry and redelivery of a step
    sends the same Message-ID, so a repeat is recognisable (and mail systems that
    deduplicate by Message-ID drop it)."""
    return f"<{hashlib.sha256(idempotency_key.encode('utf-8')).hexdigest()[:32]}@ledgerflow>"


class EmailNotifier:
    """Sends the message as a plain-text email to ``options.to`` (an address, a
    comma-separated string of addresses, or a list of them; required), with subject
    ``options.subject`` (default ``[<channel>] notification``), through the SMTP server
    configured by the ``LEDGERFLOW_SMTP_*`` environment variables, read at each send.

    The Message-ID is :func:`message_id_for` the step's idempotency key, which is also sent
    as ``X-Ledgerflow-Idempotency-Key``. A refused or lost connection, a timeout
    (``options.timeout`` seconds, default 10) or a 4xx reply is tried again, up to
    ``options.attempts`` tries in all (default 3), after an exponential backoff with jitter
    from ``initial_wait`` up to ``max_wait`` seconds; a 5xx reply fails at once.
    """

    def __init__(self, *, initial_wait: float = 0.2, max_wait: float = 2.0) -> None:
        self.initial_wait = initial_wait
        self.max_wait = max_wait

    def send(
        self, channel: str, message: str, options: Mapping[str, JSON], context: ActionContext
    ) -> JSON:
        """Deliver the email; returns ``{"notifier": "email", "to": [addresses],
        "message_id", "idempotency_key"}``, plus ``"refused": {address: reply}`` when the
        server accepted some recipients and refused others.

        Raises :class:`~ledgerflow_notify.NotifierConfigurationError` for a missing or bad
        option or setting, :class:`~ledgerflow_notify.DeliveryError` when the server refused
        the message (or every recipient) or every attempt failed.
        """
        problems = unknown_keys(options, OPTIONS)
        recipients = _recipients(options.get("to"), problems)
        subject = _subject(options.get("subject", f"[{channel}] notification"), problems)
        attempts = attempts_option(options, problems)
        timeout = timeout_option(options, problems)
        settings = _Settings.from_environment(problems)
        if problems or settings is None:
            raise NotifierConfigurationError("email", problems)

        addresses = list(dict.fromkeys(address for _, address in recipients))
        message_id = message_id_for(context.idempotency_key)
        mail = EmailMessage(policy=_POLICY)
        mail["From"] = settings.sender
        mail["To"] = ", ".join(formataddr(r) for r in recipients)
        mail["Subject"] = subject
        mail["Date"] = formatdate(usegmt=True)
        mail["Message-ID"] = message_id
        mail[IDEMPOTENCY_HEADER] = context.idempotency_key
        mail.set_content(message)

        target = ", ".join(addresses)
        tries = 0
        try:
            for attempt in retrying(attempts, backoff_wait(self.initial_wait, self.max_wait, 0)):
                with attempt:
                    tries = attempt.retry_state.attempt_number
                    refused = _deliver(settings, mail, addresses, timeout)
        except TransientFailure as failure:
            raise DeliveryError(
                f"email notification of channel {channel!r} to {target} via "
                f"{settings.host}:{settings.port} failed after {plural(tries, 'attempt')}, "
                f"the last with {failure.reason}",
                notifier="email",
                target=target,
                attempts=tries,
                status=failure.status,
                transient=True,
            ) from failure
        except _Refused as refusal:
            raise DeliveryError(
                f"email notification of channel {channel!r} to {target} was refused by "
                f"{settings.host}:{settings.port} (not tried again): {refusal.reason}",
                notifier="email",
                target=target,
                attempts=tries,
                status=refusal.status,
            ) from refusal
        result: dict[str, JSON] = {
            "notifier": "email",
            "to": addresses,
            "message_id": message_id,
            "idempotency_key": context.idempotency_key,
        }
        if refused:
            result["refused"] = {
                address: _reply(code, text) for address, (code, text) in refused.items()
            }
        return result


class _Refused(Exception):
    """The server refused for good (a 5xx reply, a missing capability)."""

    def __init__(self, reason: str, *, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass(frozen=True, kw_only=True)
class _Settings:
    """The SMTP settings of the worker's environment."""

    host: str
    port: int
    sender: str
    sender_address: str
    user: str | None
    password: str | None
    starttls: bool

    @classmethod
    def from_environment(cls, problems: list[str]) -> _Settings | None:
        """Read them, adding a problem for each missing or malformed variable."""
        start = len(problems)
        host = os.environ.get(HOST_ENV) or "localhost"
        raw_port = os.environ.get(PORT_ENV) or "25"
        port = 25
        try:
            port = int(raw_port)
        except ValueError:
            port = 0
        if not 1 <= port <= 65535:
            problems.append(f"{PORT_ENV}: must be a port number (1 to 65535), not {raw_port!r}")
        raw_sender = os.environ.get(FROM_ENV, "").strip()
        sender: tuple[str, str] | None = None
        if not raw_sender:
            problems.append(
                f"{FROM_ENV}: not set: the worker's environment must give the sender's address "
                "(ops@example.com, or Ops <ops@example.com>)"
            )
        else:
            found, problem = _parse_addresses(raw_sender)
            if problem or len(found) != 1:
                problems.append(f"{FROM_ENV}: {problem or 'must be one address'}: {raw_sender!r}")
            else:
                sender = found[0]
        user = os.environ.get(USER_ENV) or None
        password = os.environ.get(PASSWORD_ENV) or None
        if (user is None) != (password is None):
            given, missing = (USER_ENV, PASSWORD_ENV) if user else (PASSWORD_ENV, USER_ENV)
            problems.append(f"{missing}: not set, while {given} is: set both to log in, or none")
        raw_starttls = os.environ.get(STARTTLS_ENV, "").strip().lower()
        if raw_starttls not in _TRUE + _FALSE:
            problems.append(f"{STARTTLS_ENV}: must be 1 or 0, not {raw_starttls!r}")
        if len(problems) > start or sender is None:
            return None
        return cls(
            host=host,
            port=port,
            sender=formataddr(sender),
            sender_address=sender[1],
            user=user,
            password=password,
            starttls=raw_starttls in _TRUE,
        )


def _deliver(
    settings: _Settings, mail: EmailMessage, addresses: list[str], timeout: float
) -> dict[str, tuple[int, bytes]]:
    """One attempt; returns the recipients refused while others were accepted. Raises
    :class:`TransientFailure` for what is worth another attempt, :class:`_Refused` for the
    rest."""
    try:
        with smtplib.SMTP(settings.host, settings.port, timeout=timeout) as smtp:
            if settings.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if settings.user is not None and settings.password is not None:
                smtp.login(settings.user, settings.password)
            return smtp.send_message(mail, settings.sender_address, addresses)
    except smtplib.SMTPRecipientsRefused as exc:
        replies = dict(exc.recipients)
        detail = "; ".join(f"{a}: {_reply(code, text)}" for a, (code, text) in replies.items())
        codes = [code for code, _ in replies.values()]
        if codes and all(400 <= code < 500 for code in codes):
            raise TransientFailure(f"every recipient refused: {detail}", status=codes[0]) from exc
        status = next((code for code in codes if not 400 <= code < 500), None)
        raise _Refused(f"every recipient refused: {detail}", status=status) from exc
    except smtplib.SMTPResponseException as exc:
        reply = _reply(exc.smtp_code, exc.smtp_error)
        if 400 <= exc.smtp_code < 500:
            raise TransientFailure(f"reply {reply}", status=exc.smtp_code) from exc
        raise _Refused(f"reply {reply}", status=exc.smtp_code) from exc
    except smtplib.SMTPServerDisconnected as exc:
        raise TransientFailure(f"the connection was lost ({exc})") from exc
    except smtplib.SMTPException as exc:
        # no STARTTLS or no authentication method the server offers: it will not change
        raise _Refused(f"{type(exc).__name__}: {exc}") from exc
    except ssl.SSLCertVerificationError as exc:
        raise _Refused(f"the server's certificate was not accepted ({exc})") from exc
    except TimeoutError as exc:
        raise TransientFailure(f"a timeout after {timeout:g} s") from exc
    except OSError as exc:
        raise TransientFailure(f"{type(exc).__name__}: {exc}") from exc


def _reply(code: int, text: bytes | str) -> str:
    message = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    return one_line(f"{code} {message}")


def _recipients(raw: JSON, problems: list[str]) -> list[tuple[str, str]]:
    """``options.to`` as ``(display name, address)`` pairs."""
    if raw is None:
        problems.append("options.to: required: an address, or a list of addresses")
        return []
    if isinstance(raw, str):
        entries = [raw]
    elif isinstance(raw, list) and all(isinstance(e, str) for e in raw):
        entries = [e for e in raw if isinstance(e, str)]
    else:
        problems.append(f"options.to: must be an address or a list of addresses, not {raw!r}")
        return []
    found: list[tuple[str, str]] = []
    malformed = False
    for entry in entries:
        parsed, problem = _parse_addresses(entry)
        if problem:
            problems.append(f"options.to: {problem}: {entry!r}")
            malformed = True
        found += parsed
    if not found and not malformed:
        problems.append("options.to: no recipient given")
    return found


def _parse_addresses(text: str) -> tuple[list[tuple[str, str]], str | None]:
    """The addresses in ``text`` (``a@example.com``, ``Ann <ann@example.com>, b@example.com``),
    or a problem: checked roughly (one ``@``, a local part and a domain, no spaces), and so
    that every ``@`` of the text is in an address parsed from it, so a malformed list is
    refused rather than read as something else."""
    if "\r" in text or "\n" in text:
        return [], "a line break is not allowed in an address"
    parsed = getaddresses([text])
    if not parsed:
        return [], "not an email address"
    for _name, address in parsed:
        if not _plausible(address):
            return [], "not an email address (or a comma-separated list of them)"
    if text.count("@") != len(parsed):
        return [], "not an email address (or a comma-separated list of them)"
    return parsed, None


def _plausible(address: str) -> bool:
    local, at, domain = address.rpartition("@")
    return (
        bool(at and local and domain)
        and "@" not in local
        and not any(c.isspace() or c in '<>,;()[]\\"' for c in address)
        and all(domain.split("."))
    )


def _subject(raw: JSON, problems: list[str]) -> str:
    if not isinstance(raw, str):
        problems.append(f"options.subject: must be a string, not {raw!r}")
        return ""
    if "\r" in raw or "\n" in raw:
        problems.append("options.subject: a line break is not allowed in a subject")
        return ""
    return raw
