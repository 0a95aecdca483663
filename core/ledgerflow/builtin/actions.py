"""The built-in actions.

- ``ledgerflow.record``: returns its parameters, so they are kept in the ledger as the step's
  result; for steps whose only job is to leave an audited trace.
- ``ledgerflow.notify``: sends ``message`` to ``channel`` through the ``log`` notifier (the
  ``ledgerflow.notify`` logger) and returns what was sent.
"""

from __future__ import annotations

import logging
from typing import Any

from ledgerflow.registry import ActionContext, ActionRegistry, Param

__all__ = ["register_builtin_actions"]

notify_log = logging.getLogger("ledgerflow.notify")


def _record(params: dict[str, Any], context: ActionContext) -> dict[str, Any]:
    return dict(params)


def _notify(params: dict[str, Any], context: ActionContext) -> dict[str, Any]:
    notify_log.info(
        "[%s] %s",
        params["channel"],
        params["message"],
        extra={"idempotency_key": context.idempotency_key},
    )
    return {"channel": params["channel"], "message": params["message"], "notifier": "log"}


def register_builtin_actions(registry: ActionRegistry) -> None:
    """Register every built-in action in ``registry``."""
    registry.register_simple_action(
        "ledgerflow.record",
        "Keep the given parameters in the ledger as the step's result.",
        [],
        _record,
        additional_params=True,
    )
    registry.register_simple_action(
        "ledgerflow.notify",
        "Send a message to a channel through the log notifier.",
        [
            Param(name="channel", type="string", description="Where the message goes."),
            Param(name="message", type="string", description="What it says."),
        ],
        _notify,
    )
