"""The one exception hierarchy every ledgerflow error belongs to.

Catch :class:`LedgerflowError` to handle anything ledgerflow raises on purpose; each subclass
says which input was wrong and carries enough detail to act on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ledgerflow.model import Problem

__all__ = [
    "ActionRegistrationError",
    "CircuitOpenError",
    "ConfinementError",
    "DefinitionConflictError",
    "DefinitionError",
    "EventNotFoundError",
    "ExecutionNotFoundError",
    "ExpressionError",
    "InvalidEventError",
    "InvalidInputError",
    "InvalidParametersError",
    "LeaseLostError",
    "LedgerError",
    "LedgerflowError",
    "NotFoundError",
    "PluginError",
    "SchemaError",
    "StoreUnavailableError",
    "UnknownActionError",
    "UnstorableResultError",
    "WorkflowNotFoundError",
]


class LedgerflowError(Exception):
    """Base class of every error ledgerflow raises on purpose."""


class DefinitionError(LedgerflowError):
    """A workflow definition is malformed or invalid.

    ``problems`` lists every problem found, each with its location; ``str(error)`` prints one
    problem per line.
    """

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class ExpressionError(LedgerflowError):
    """An expression failed to compile, or failed while being evaluated.

    ``source`` is the expression's text. Evaluation errors (a missing key, a type mismatch) are
    raised as this type too, so a caller never sees the expression engine's own exceptions.
    """

    def __init__(self, message: str, *, source: str) -> None:
        self.source = source
        self.message = message
        super().__init__(f"{message} in expression {source!r}")


class LedgerError(LedgerflowError):
    """A ledger cannot be folded: its records are out of order or belong to another workflow."""


class UnknownActionError(LedgerflowError):
    """No action is registered under ``name``."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"unknown action {name!r}")


class InvalidParametersError(LedgerflowError):
    """An action's parameters break its schema; ``problems`` names each bad field."""

    def __init__(self, action: str, problems: Sequence[str]) -> None:
        self.action = action
        self.problems: tuple[str, ...] = tuple(problems)
        super().__init__(f"invalid parameters for action {action!r}: " + "; ".join(self.problems))


class ActionRegistrationError(LedgerflowError):
    """An action cannot be registered: a duplicate name, a bad schema, a bad isolation level, a
    bad circuit breaker policy."""


class CircuitOpenError(LedgerflowError):
    """The circuit breaker of ``action`` is open: the call was refused without being made.

    ``retry_after`` is how many seconds from now a trial call may be admitted (never negative);
    ``when_open`` is the action's policy for this case: ``"fail"`` (the call fails now) or
    ``"delay"`` (the caller holds the event back and tries again after ``retry_after``).
    ``last_error`` is the last failure recorded for the action, if any. ``str(error)`` is one
    line naming the action, the last error and when a call will be tried again.
    """

    def __init__(
        self,
        action: str,
        *,
        retry_after: float,
        when_open: str,
        last_error: str | None = None,
    ) -> None:
        self.action = action
        self.retry_after = max(0.0, retry_after)
        self.when_open = when_open
        self.last_error = last_error
        cause = "no error recorded" if not last_error else _one_line(last_error)
        super().__init__(
            f"the circuit of action {action!r} is open (last error: {cause}); "
            f"a call will be tried again in {self.retry_after:.1f} s"
        )

    def __reduce__(self) -> tuple[object, ...]:
        # keyword-only arguments: rebuild from them, so the error survives pickling
        return _rebuild_circuit_open, (
            self.action,
            self.retry_after,
            self.when_open,
            self.last_error,
        )


def _rebuild_circuit_open(
    action: str, retry_after: float, when_open: str, last_error: str | None
) -> CircuitOpenError:
    return CircuitOpenError(
        action, retry_after=retry_after, when_open=when_open, last_error=last_error
    )


def _one_line(text: str, limit: int = 200) -> str:
    lines = text.strip().splitlines()
    line = lines[0].strip() if lines else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


class NotFoundError(LedgerflowError):
    """What was asked for does not exist for this tenant.

    Another tenant's execution or event is "not found" too, never "forbidden": a tenant cannot
    learn what another one has.
    """


class WorkflowNotFoundError(NotFoundError):
    """No definition is registered under this workflow name (and version)."""


class ExecutionNotFoundError(NotFoundError):
    """No execution with this id exists for this tenant."""


class EventNotFoundError(NotFoundError):
    """No event with this id exists for this tenant."""


class UnstorableResultError(LedgerflowError):
    """An action (or a plugin's compensation) returned a result the ledger cannot store on
    every database (not JSON, NaN or infinity, a NUL character, text that is not Unicode,
    nesting too deep): its step fails at once, never retried, with nothing recorded under its
    key (a database action's writes roll back), and the event is decided all the same."""


class InvalidInputError(LedgerflowError):
    """An argument is malformed: an empty tenant, a context or payload that is not JSON, a
    role that is not a string. Nothing was written."""


class InvalidEventError(InvalidInputError):
    """An event cannot be accepted into the ledger: its name is unknown to the execution's
    workflow version, or its payload breaks the event's schema. Nothing was written."""


class DefinitionConflictError(LedgerflowError):
    """A different definition is already registered under the same name and version; register
    the change under a new version."""


class LeaseLostError(LedgerflowError):
    """The worker no longer holds the execution's lease (it expired and another worker took
    over); what it was about to write was discarded."""


class SchemaError(LedgerflowError):
    """The database schema is missing or older than this version of ledgerflow expects; run
    ``ledgerflow db upgrade``."""


class StoreUnavailableError(LedgerflowError):
    """The database could not be reached or refused the operation; nothing was acknowledged."""


class ConfinementError(LedgerflowError):
    """The role named to run database actions would not be held inside its tenant: it is not
    registered as confined (``ledgerflow db confine ROLE``), or it is a superuser or exempt
    from row-level security. No action ran."""


def first_line(exc: BaseException) -> str:
    """The first line of what ``exc`` (or the driver error it wraps) says: enough for a log
    line or a one-line error, without the SQL and parameters SQLAlchemy appends."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class PluginError(LedgerflowError):
    """A plugin cannot be registered: its name is taken, or one of its hook implementations
    does not fit the hook. The message names the plugin."""
