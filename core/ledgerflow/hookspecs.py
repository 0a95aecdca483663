"""The hooks a ledgerflow plugin may implement.

A plugin is any module or object holding functions marked ``@ledgerflow.hookimpl`` whose names
are the hooks below. It reaches ledgerflow in one of three ways: an entry point in the group
``ledgerflow`` of an installed distribution (``[project.entry-points.ledgerflow]`` in its
``pyproject.toml``), the module named by ``--app`` (``LEDGERFLOW_APP``), or
:meth:`ledgerflow.plugins.Plugins.register` in code. An implementation may accept any subset of
a hook's arguments, by name.

ledgerflow's own actions, notifier, stores and transport are registered through these same
hooks, by the plugin ``ledgerflow.builtin``.

How hooks are called:

- **registration** hooks are called once per engine, one plugin at a time; what each plugin
  registered is kept for ``ledgerflow plugins``, and a plugin that raises is reported by name
  and the rest go on;
- **life-cycle** hooks are notifications. Those about events and executions are called after
  the fact is committed to the ledger; those about steps are called as the step runs (before
  its event commits, so a crash may call them again for the same step). An implementation that
  raises is logged with its plugin's name, the others still run, and processing goes on;
- **policy** hooks (:func:`ledgerflow_retry_policy`, :func:`ledgerflow_compensate`,
  :func:`ledgerflow_circuit_breaker`) return a decision: the first implementation that returns
  something other than ``None`` decides (plugins registered later are asked first);
- :func:`ledgerflow_run_step` runs every step; a wrapper (``@hookimpl(wrapper=True)``) around it
  can time, trace or log any step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import attrs
import pluggy

from ledgerflow.model import JSON

if TYPE_CHECKING:
    from ledgerflow.breakers import BreakerState
    from ledgerflow.engine import Engine
    from ledgerflow.expressions import ExpressionFunction
    from ledgerflow.notifiers import Notifier
    from ledgerflow.registry import ActionRegistry
    from ledgerflow.store.sql import SQLStore
    from ledgerflow.transports import Transport

__all__ = [
    "PROJECT",
    "RetryDecision",
    "StepInfo",
    "hookimpl",
    "hookspec",
]

PROJECT = "ledgerflow"
"""The pluggy project name, and the entry-point group plugins are found in."""

hookspec = pluggy.HookspecMarker(PROJECT)
"""Marks the hook specifications below."""

hookimpl = pluggy.HookimplMarker(PROJECT)
"""Marks a plugin's implementation of a hook: ``@ledgerflow.hookimpl``."""


@attrs.frozen(kw_only=True)
class StepInfo:
    """The step a hook is told about: which execution, event and step, which action, the
    idempotency key it runs under, and whether this is the step's compensation."""

    execution_id: str
    tenant: str
    event_id: str
    step_id: str
    action: str
    key: str
    compensation: bool = False


@attrs.frozen(kw_only=True)
class RetryDecision:
    """A retry policy's answer: whether to try the step again and, optionally, how many
    seconds to wait first (``None``: the step's own backoff)."""

    retry: bool
    wait: float | None = None

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.retry, bool):
            raise TypeError("RetryDecision.retry must be true or false")
        if self.wait is not None and not (isinstance(self.wait, int | float) and self.wait >= 0):
            raise ValueError("RetryDecision.wait must be a number of seconds, at least 0")


# --------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------


@hookspec
def ledgerflow_register_actions(registry: ActionRegistry, engine: Engine) -> None:
    """Register actions in ``registry`` (``registry.register_simple_action(...)``,
    ``registry.register_database_action(...)`` or the ``@registry.action`` decorator).

    ``engine`` is the engine the actions will run in, for an action that needs it (to append
    an event, say). An action name another plugin registered already is refused, naming both.
    """


@hookspec
def ledgerflow_register_notifiers(notifiers: dict[str, Notifier]) -> None:
    """Add notifiers to ``notifiers``, keyed by the name steps give as ``notifier`` to
    ``ledgerflow.notify``. A :class:`~ledgerflow.notifiers.Notifier` has one method,
    ``send(channel, message, options, context)``."""


@hookspec
def ledgerflow_register_stores(stores: dict[str, Callable[[str], SQLStore]]) -> None:
    """Add store factories to ``stores``, keyed by URL scheme (``sqlite``, ``postgresql``):
    each is called with a database URL of its scheme and returns the store."""


@hookspec
def ledgerflow_register_transports(
    transports: dict[str, Callable[[str, Engine], Transport]],
) -> None:
    """Add transport factories to ``transports``, keyed by URL scheme (``redis``): each is
    called with the broker URL and the engine, and returns the
    :class:`~ledgerflow.transports.Transport` that carries its workers' wake-ups. The scheme
    ``database`` (the store's own outbox) is built in."""


@hookspec
def ledgerflow_register_expression_functions(functions: list[ExpressionFunction]) -> None:
    """Append :class:`~ledgerflow.expressions.ExpressionFunction` s to ``functions``: they
    become callable in every expression. They must be pure: a ledger is replayed through them."""


# --------------------------------------------------------------------------------------------
# Life cycle
# --------------------------------------------------------------------------------------------


@hookspec
def ledgerflow_execution_created(
    execution_id: str, tenant: str, workflow: str, version: int
) -> None:
    """An execution was created (committed)."""


@hookspec
def ledgerflow_event_enqueued(execution_id: str, tenant: str, event_id: str, event: str) -> None:
    """An event was appended to an execution's ledger (committed); ``event`` is its name.
    ``trace`` information a client wants carried to the worker belongs in the payload."""


@hookspec
def ledgerflow_event_started(
    execution_id: str, tenant: str, event_id: str, event: str, payload: Mapping[str, JSON]
) -> None:
    """A worker took up an event and is about to decide it (nothing is committed yet; a crash
    may call it again for the same event). Called in the thread that decides it, whose context
    the event's steps run in copies of; ``ledgerflow_event_processed`` follows once its outcome
    is committed. ``payload`` is the event's, as appended (a tracing plugin finds the trace
    context a client put there)."""


@hookspec
def ledgerflow_event_processed(
    execution_id: str,
    tenant: str,
    event_id: str,
    event: str,
    status: str,
    outcome: str,
    detail: str | None,
) -> None:
    """An event was decided and its outcome committed: ``status`` is ``processed``,
    ``rejected`` or ``failed``, ``outcome`` the transition's result (``applied``,
    ``compensated``, ``failed``, ``retried``) or the rejection's reason."""


@hookspec
def ledgerflow_event_rejected(
    execution_id: str, tenant: str, event_id: str, event: str, reason: str, detail: str
) -> None:
    """An event was rejected (committed): ``reason`` is a
    :class:`~ledgerflow.model.RejectReason` value."""


@hookspec
def ledgerflow_transition_applied(
    execution_id: str, tenant: str, event_id: str, transition: str, source: str, target: str
) -> None:
    """A transition was applied and its steps' outcomes committed."""


@hookspec
def ledgerflow_transition_reverted(
    execution_id: str, tenant: str, event_id: str, transition: str, source: str, target: str
) -> None:
    """A transition was undone after its completed steps were compensated (committed): the
    execution is back in ``target``, the state the transition had left."""


@hookspec
def ledgerflow_execution_resumed(
    execution_id: str, tenant: str, retried_event_id: str, requested_by: str | None
) -> None:
    """A retry resumed a failed execution (committed); the outcome follows as
    ``ledgerflow_event_processed`` of the retried event."""


@hookspec
def ledgerflow_step_started(step: StepInfo) -> None:
    """A step (or a compensation) is about to run its first attempt."""


@hookspec
def ledgerflow_step_succeeded(step: StepInfo, result: JSON, attempts: int, duration: float) -> None:
    """A step succeeded after ``attempts`` tries and ``duration`` seconds."""


@hookspec
def ledgerflow_step_failed(step: StepInfo, error: str, attempts: int, duration: float) -> None:
    """A step failed for good after ``attempts`` tries; its strategy applies next."""


@hookspec
def ledgerflow_step_retried(step: StepInfo, error: str, attempt: int, wait: float) -> None:
    """Attempt ``attempt`` of a step failed with ``error``; the next starts in ``wait``
    seconds."""


@hookspec
def ledgerflow_step_compensated(step: StepInfo, result: JSON) -> None:
    """A completed step was undone (``step.compensation`` is true)."""


@hookspec
def ledgerflow_execution_completed(execution_id: str, tenant: str, state: str) -> None:
    """An execution reached a terminal state (committed)."""


@hookspec
def ledgerflow_execution_failed(execution_id: str, tenant: str, reason: str) -> None:
    """An execution failed (committed); ``ledgerflow execution retry`` can resume it."""


@hookspec
def ledgerflow_worker_started(worker_id: str, concurrency: int) -> None:
    """A worker is about to start its threads."""


@hookspec
def ledgerflow_worker_stopping(worker_id: str) -> None:
    """A worker was asked to stop: it finishes the events in hand and returns."""


# --------------------------------------------------------------------------------------------
# Policies
# --------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def ledgerflow_retry_policy(
    action: str, error: BaseException, attempt: int
) -> RetryDecision | None:
    """Whether a step of ``action`` that failed with ``error`` on attempt ``attempt`` is tried
    again, and after how long. Asked only for steps whose strategy is ``retry``, and never
    beyond their ``attempts``; ``None`` leaves it to the step's strategy (failures that trying
    again cannot mend, such as invalid parameters, are never retried)."""


@hookspec(firstresult=True)
def ledgerflow_compensate(step: StepInfo, result: JSON, context: Mapping[str, Any]) -> JSON | None:
    """Undo a completed step that declares no compensating action, returning a JSON value
    (recorded as the compensation's result, under the step's compensation key, so it is not
    run again), or ``None`` if this plugin does not know how. ``result`` is the step's result;
    ``context`` holds the variables its parameters were computed from. Raising fails the
    compensation, and the execution with it."""


@hookspec(firstresult=True)
def ledgerflow_circuit_breaker(
    action: str, state: BreakerState
) -> Literal["allow", "refuse"] | None:
    """Override the circuit breaker of ``action`` (one that has a breaker policy) before a
    call: ``"allow"`` lets the call through even while the circuit is open, ``"refuse"``
    refuses it even while closed, ``None`` leaves the decision to the breaker."""


@hookspec(firstresult=True)
def ledgerflow_run_step(step: StepInfo, params: Any, call: Callable[[], JSON]) -> JSON:
    """Run one attempt of a step: ledgerflow's own implementation returns ``call()``. Plugins
    may only wrap it (``@hookimpl(wrapper=True)``, ``result = yield``), to time or trace every
    step; a plain implementation is refused, as it could run the action a second time. A
    wrapper must return the result it was given, or raise to fail the attempt. For a database
    action the wrapper runs inside the action's transaction: it must not write to ledgerflow's
    database itself (on SQLite it would wait for that very transaction)."""
