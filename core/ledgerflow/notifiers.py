"""Notifiers: where ``ledgerflow.notify`` sends its messages.

A notifier is registered under a name by a plugin (hook ``ledgerflow_register_notifiers``);
a step picks it with the ``notifier`` parameter of ``ledgerflow.notify``. The ``log`` notifier
ships in core; ``ledgerflow-notify`` adds ``webhook`` and ``email``.

A notification is an ordinary action's effect: at least once. The notifier receives the step's
:class:`~ledgerflow.registry.ActionContext`, whose ``idempotency_key`` it should pass on (as
an ``Idempotency-Key`` header, a ``Message-ID``) so the receiving side can drop a repeat.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from ledgerflow.model import JSON
from ledgerflow.registry import ActionContext

__all__ = ["LogNotifier", "Notifier"]

notify_log = logging.getLogger("ledgerflow.notify")


@runtime_checkable
class Notifier(Protocol):
    """Sends one message to a channel."""

    def send(
        self, channel: str, message: str, options: Mapping[str, JSON], context: ActionContext
    ) -> JSON:
        """Deliver ``message`` to ``channel`` (``options`` are the step's notifier-specific
        settings), raising if it could not be delivered; the returned JSON value is recorded
        as the step's result."""
        ...


class LogNotifier:
    """Writes each message to the ``ledgerflow.notify`` logger at INFO, as
    ``[channel] message``, with the idempotency key as the record's ``idempotency_key``."""

    def send(
        self, channel: str, message: str, options: Mapping[str, JSON], context: ActionContext
    ) -> JSON:
        """Log the message; returns what was sent."""
        notify_log.info(
            "[%s] %s", channel, message, extra={"idempotency_key": context.idempotency_key}
        )
        return {"channel": channel, "message": message, "notifier": "log"}
