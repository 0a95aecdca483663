"""ledgerflow's testing kit: test your workflows the way ledgerflow tests itself.

- :class:`Harness`: a real engine on a throwaway store (SQLite in memory by default), with a
  :class:`Clock` that moves only when told, every action call recorded, and faults injected
  by the real mechanisms (:class:`Crash`, :class:`LeaseExpires`, a wake-up delivered again, a
  worker restarted);
- :mod:`ledgerflow.testing.strategies`: hypothesis strategies derived from a definition
  (events, payloads from the declared schemas, roles, sequences, clock advances, faults);
- :func:`check_workflow`: a hypothesis state machine that drives an execution with generated
  events and faults and checks the engine's guarantees and your invariants, reporting the
  shortest failing sequence as a ledger;
- :func:`check_definition` / :func:`assert_sound`: static checks of a definition;
- :class:`~ledgerflow.testing.contracts.StoreContract` and
  :class:`~ledgerflow.testing.contracts.BrokerTransportContract`: the contract test suites a
  store and a broker transport must pass;
- a pytest plugin (loaded by pytest through its ``pytest11`` entry point) with the fixtures
  ``ledgerflow_harness`` and ``ledgerflow_engine`` and the option ``--ledgerflow-db``.

The harness needs only ledgerflow; the strategies and :func:`check_workflow` need hypothesis,
and the contract suites pytest. They are imported when first used, so ``import
ledgerflow.testing`` works wherever ledgerflow does.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ledgerflow.testing.harness import (
    ActionCall,
    ClientRetry,
    Clock,
    Crash,
    Fault,
    Harness,
    LeaseExpires,
    Redelivery,
    SimulatedCrash,
    StepFault,
    WorkerRestart,
    render_ledger,
)
from ledgerflow.testing.static import assert_sound, check_definition

if TYPE_CHECKING:
    from ledgerflow.testing.stateful import (
        Invariant,
        Observation,
        check_workflow,
        workflow_machine,
    )

__all__ = [
    "ActionCall",
    "ClientRetry",
    "Clock",
    "Crash",
    "Fault",
    "Harness",
    "Invariant",
    "LeaseExpires",
    "Observation",
    "Redelivery",
    "SimulatedCrash",
    "StepFault",
    "WorkerRestart",
    "assert_sound",
    "check_definition",
    "check_workflow",
    "render_ledger",
    "workflow_machine",
]

_NEEDS_HYPOTHESIS = {
    "Invariant": "ledgerflow.testing.stateful",
    "Observation": "ledgerflow.testing.stateful",
    "check_workflow": "ledgerflow.testing.stateful",
    "workflow_machine": "ledgerflow.testing.stateful",
}


def __getattr__(name: str) -> Any:
    module = _NEEDS_HYPOTHESIS.get(name)
    if module is None:
        raise AttributeError(f"module 'ledgerflow.testing' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
