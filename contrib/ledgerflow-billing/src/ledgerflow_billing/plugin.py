"""The plugin: the module the entry point ``billing`` names, holding its hook implementations.

ledgerflow registers this module with every engine it builds. Each function below is marked
``@hookimpl`` and named after the hook it implements (see ``ledgerflow.hookspecs``); it takes
only the hook arguments it uses. Nothing here runs at import time: the module may be imported
by a process that never runs a step.
"""

from __future__ import annotations

import time
from collections.abc import Generator

from ledgerflow.hookspecs import RetryDecision, StepInfo, hookimpl
from ledgerflow.model import JSON
from ledgerflow.registry import ActionRegistry

from ledgerflow_billing.actions import CreditExceedsInvoiceError, register_actions
from ledgerflow_billing.metrics import metrics

__all__ = [
    "ledgerflow_execution_completed",
    "ledgerflow_register_actions",
    "ledgerflow_retry_policy",
    "ledgerflow_run_step",
]

PREFIX = "billing."
"""The namespace of this plugin's actions."""


@hookimpl
def ledgerflow_register_actions(registry: ActionRegistry) -> None:
    """``billing.compute_tax`` and ``billing.issue_credit_note``."""
    register_actions(registry)


@hookimpl
def ledgerflow_execution_completed(tenant: str, state: str) -> None:
    """Count the execution in :data:`ledgerflow_billing.metrics.metrics`."""
    metrics.execution_completed(tenant, state)


@hookimpl(wrapper=True)
def ledgerflow_run_step(step: StepInfo) -> Generator[None, JSON, JSON]:
    """Time every attempt of a billing action, whether it returns or raises; other actions'
    steps pass through untouched."""
    if not step.action.startswith(PREFIX):
        return (yield)
    started = time.perf_counter()
    try:
        result = yield
    except BaseException:
        metrics.action_ran(step.action, time.perf_counter() - started, failed=True)
        raise
    metrics.action_ran(step.action, time.perf_counter() - started, failed=False)
    return result


@hookimpl
def ledgerflow_retry_policy(action: str, error: BaseException) -> RetryDecision | None:
    """Never retry a credit note that exceeds its invoice: the same request would fail again.
    Every other failure is left to the step's own strategy."""
    if action == "billing.issue_credit_note" and isinstance(error, CreditExceedsInvoiceError):
        return RetryDecision(retry=False)
    return None
