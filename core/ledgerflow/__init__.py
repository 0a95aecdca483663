"""ledgerflow: a durable, event-sourced workflow engine.

Workflows are versioned state machines; each execution is an append-only ledger of events whose
state is derived by replaying it. This module is the public API: everything a user needs is
importable from here.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ledgerflow import store
from ledgerflow.breakers import BreakerPolicy, BreakerState, CircuitBreakers
from ledgerflow.definitions import Definition, compile_workflow, load, loads, validate
from ledgerflow.engine import Engine, EventInfo, Execution, HistoryEntry, Timer
from ledgerflow.errors import (
    ActionRegistrationError,
    CircuitOpenError,
    ConfinementError,
    DefinitionConflictError,
    DefinitionError,
    EventNotFoundError,
    ExecutionNotFoundError,
    ExpressionError,
    InvalidEventError,
    InvalidInputError,
    InvalidParametersError,
    LeaseLostError,
    LedgerError,
    LedgerflowError,
    NotFoundError,
    PluginError,
    SchemaError,
    StoreUnavailableError,
    UnknownActionError,
    UnstorableResultError,
    WorkflowNotFoundError,
)
from ledgerflow.hookspecs import RetryDecision, StepInfo, hookimpl
from ledgerflow.machine import apply, decide, fold, simulate, start
from ledgerflow.model import (
    ANY_STATE,
    Accepted,
    Backoff,
    Compensation,
    ContextUpdated,
    Decision,
    Event,
    EventReceived,
    EventRejected,
    EventSpec,
    ExecutionFailed,
    ExecutionMigrated,
    ExecutionResumed,
    ExecutionStarted,
    OnError,
    Problem,
    Record,
    Rejected,
    RejectReason,
    State,
    Status,
    Step,
    StepCompensated,
    StepFailed,
    StepSucceeded,
    Transition,
    TransitionApplied,
    TransitionReverted,
    Workflow,
)
from ledgerflow.notifiers import Notifier
from ledgerflow.plugins import PluginInfo, Plugins
from ledgerflow.registry import Action, ActionContext, ActionRegistry, Isolation, Param
from ledgerflow.versioning import (
    MigrationOutcome,
    MigrationRefusal,
    MigrationReport,
    WorkflowDiff,
    diff_workflows,
)
from ledgerflow.worker import Worker

try:
    __version__ = version("ledgerflow")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"

__all__ = [
    "ANY_STATE",
    "Accepted",
    "Action",
    "ActionContext",
    "ActionRegistrationError",
    "ActionRegistry",
    "Backoff",
    "BreakerPolicy",
    "BreakerState",
    "CircuitBreakers",
    "CircuitOpenError",
    "Compensation",
    "ConfinementError",
    "ContextUpdated",
    "Decision",
    "Definition",
    "DefinitionConflictError",
    "DefinitionError",
    "Engine",
    "Event",
    "EventInfo",
    "EventNotFoundError",
    "EventReceived",
    "EventRejected",
    "EventSpec",
    "Execution",
    "ExecutionFailed",
    "ExecutionMigrated",
    "ExecutionNotFoundError",
    "ExecutionResumed",
    "ExecutionStarted",
    "ExpressionError",
    "HistoryEntry",
    "InvalidEventError",
    "InvalidInputError",
    "InvalidParametersError",
    "Isolation",
    "LeaseLostError",
    "LedgerError",
    "LedgerflowError",
    "MigrationOutcome",
    "MigrationRefusal",
    "MigrationReport",
    "NotFoundError",
    "Notifier",
    "OnError",
    "Param",
    "PluginError",
    "PluginInfo",
    "Plugins",
    "Problem",
    "Record",
    "RejectReason",
    "Rejected",
    "RetryDecision",
    "SchemaError",
    "State",
    "Status",
    "Step",
    "StepCompensated",
    "StepFailed",
    "StepInfo",
    "StepSucceeded",
    "StoreUnavailableError",
    "Timer",
    "Transition",
    "TransitionApplied",
    "TransitionReverted",
    "UnknownActionError",
    "UnstorableResultError",
    "Worker",
    "Workflow",
    "WorkflowDiff",
    "WorkflowNotFoundError",
    "__version__",
    "apply",
    "compile_workflow",
    "decide",
    "diff_workflows",
    "fold",
    "hookimpl",
    "load",
    "loads",
    "simulate",
    "start",
    "store",
    "validate",
]
