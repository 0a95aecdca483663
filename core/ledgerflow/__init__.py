"""ledgerflow: a durable, event-sourced workflow engine.

Workflows are versioned state machines; each execution is an append-only ledger of events whose
state is derived by replaying it. This module is the public API: everything a user needs is
importable from here.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ledgerflow import store

from ledgerflow.definitions import Definition, compile_workflow, load, loads, validate
from ledgerflow.errors import DefinitionError, ExpressionError, LedgerError, LedgerflowError
from ledgerflow.machine import apply, decide, fold, simulate, start
from ledgerflow.model import (
    ANY_STATE,
    Accepted,
    Backoff,
    Compensation,
    Decision,
    Event,
    EventReceived,
    EventRejected,
    EventSpec,
    ExecutionFailed,
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
    Workflow,
)

try:
    __version__ = version("ledgerflow")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"

__all__ = [
    "ANY_STATE",
    "Accepted",
    "Backoff",
    "Compensation",
    "Decision",
    "Definition",
    "DefinitionError",
    "Event",
    "EventReceived",
    "EventRejected",
    "EventSpec",
    "ExecutionFailed",
    "ExecutionStarted",
    "ExpressionError",
    "LedgerError",
    "LedgerflowError",
    "OnError",
    "Problem",
    "Record",
    "RejectReason",
    "Rejected",
    "State",
    "Status",
    "Step",
    "StepCompensated",
    "StepFailed",
    "StepSucceeded",
    "Transition",
    "TransitionApplied",
    "Workflow",
    "__version__",
    "apply",
    "compile_workflow",
    "decide",
    "fold",
    "load",
    "loads",
    "simulate",
    "start",
    "validate",
]
