"""The pure state machine: :func:`fold` turns a ledger into a :class:`~ledgerflow.model.State`,
:func:`decide` says what a new event does.

Both are pure functions of their arguments: no clock, no randomness, no I/O. Replaying a ledger
from its first record, or from any state folded from a prefix of it, gives the same state; the
same state and event always give the same decision.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from ledgerflow.definitions import CompiledTransition, Definition
from ledgerflow.errors import ExpressionError, LedgerError
from ledgerflow.model import (
    JSON,
    Accepted,
    ContextUpdated,
    Decision,
    Event,
    EventReceived,
    EventRejected,
    ExecutionFailed,
    ExecutionMigrated,
    ExecutionResumed,
    ExecutionStarted,
    Record,
    Rejected,
    RejectReason,
    State,
    Status,
    StepCompensated,
    StepFailed,
    StepSucceeded,
    TransitionApplied,
    TransitionReverted,
)

__all__ = ["apply", "decide", "fold", "simulate", "start"]


def start(definition: Definition, *, context: Mapping[str, JSON] | None = None) -> ExecutionStarted:
    """The first record of a new execution of ``definition`` with ``context``."""
    return ExecutionStarted(
        seq=1, workflow=definition.name, version=definition.version, context=context or {}
    )


def apply(definition: Definition, state: State | None, record: Record) -> State:
    """The state after ``record``; ``state`` is ``None`` before the first record.

    Raises :class:`LedgerError` when the record does not follow the state: a gap or repeat in
    ``seq``, a ledger of another workflow version, a transition from a state the execution is
    not in. ``definition`` is the version the execution is pinned to when ``record`` comes,
    except for an :class:`~ledgerflow.model.ExecutionMigrated` record, which is applied with
    the definition it moves to (see :func:`fold`).
    """
    if state is None:
        if not isinstance(record, ExecutionStarted):
            raise LedgerError(f"a ledger starts with execution_started, not {record.kind}")
        if (record.workflow, record.version) != (definition.name, definition.version):
            raise LedgerError(
                f"ledger of {record.workflow} v{record.version} folded with "
                f"{definition.name} v{definition.version}"
            )
        if record.seq != 1:
            raise LedgerError(f"a ledger starts at seq 1, not {record.seq}")
        return State(
            workflow=record.workflow,
            version=record.version,
            name=definition.workflow.initial_state,
            context=record.context,
            seq=1,
        )
    if record.seq != state.seq + 1:
        raise LedgerError(f"record {record.kind} has seq {record.seq}; expected {state.seq + 1}")
    pinned = record.to_version if isinstance(record, ExecutionMigrated) else state.version
    if (state.workflow, pinned) != (definition.name, definition.version):
        raise LedgerError(
            f"seq {record.seq}: a state of {state.workflow} v{pinned} folded with "
            f"{definition.name} v{definition.version} (a migrated ledger is folded with the "
            "definitions of its versions: fold(..., versions=...))"
        )
    match record:
        case TransitionApplied():
            if record.source != state.name:
                raise LedgerError(
                    f"seq {record.seq}: transition from {record.source!r} while in {state.name!r}"
                )
            status = Status.COMPLETED if definition.is_terminal(record.target) else state.status
            return attrs.evolve(
                state,
                seq=record.seq,
                name=record.target,
                context=record.context,
                status=status,
                decided_seq=record.event_seq,
            )
        case EventRejected():
            return attrs.evolve(state, seq=record.seq, decided_seq=record.event_seq)
        case ExecutionFailed():
            return attrs.evolve(state, seq=record.seq, status=Status.FAILED)
        case TransitionReverted():
            if record.source != state.name:
                raise LedgerError(
                    f"seq {record.seq}: reverting a transition into {record.source!r} while in "
                    f"{state.name!r}"
                )
            return attrs.evolve(
                state,
                seq=record.seq,
                name=record.target,
                context=record.context,
                status=Status.COMPLETED if definition.is_terminal(record.target) else Status.ACTIVE,
            )
        case ExecutionResumed():
            if state.status is not Status.FAILED:
                raise LedgerError(f"seq {record.seq}: resuming an execution that is not failed")
            status = Status.COMPLETED if definition.is_terminal(state.name) else Status.ACTIVE
            return attrs.evolve(state, seq=record.seq, status=status, decided_seq=record.event_seq)
        case ContextUpdated():
            return attrs.evolve(state, seq=record.seq, context={**state.context, **record.values})
        case ExecutionMigrated():
            if record.from_version != state.version or record.state != state.name:
                raise LedgerError(
                    f"seq {record.seq}: a migration from v{record.from_version} in "
                    f"{record.state!r} while on v{state.version} in {state.name!r}"
                )
            if state.name not in definition.workflow.states:
                raise LedgerError(
                    f"seq {record.seq}: migrated to v{record.to_version}, which has no state "
                    f"{state.name!r}"
                )
            return attrs.evolve(state, seq=record.seq, version=record.to_version)
        case EventReceived() | StepSucceeded() | StepFailed() | StepCompensated():
            return attrs.evolve(state, seq=record.seq)
        case ExecutionStarted():
            raise LedgerError(f"seq {record.seq}: a second execution_started")
    raise LedgerError(f"unknown record {record!r}")  # pragma: no cover - exhaustive above


def fold(
    definition: Definition,
    records: Iterable[Record],
    state: State | None = None,
    *,
    versions: Callable[[int], Definition] | None = None,
) -> State:
    """The state after every record of ``records``, starting from ``state`` (a snapshot) or
    from nothing. ``fold(d, a + b) == fold(d, b, fold(d, a))`` for every split of a ledger.

    Each record is folded under the version the execution is pinned to when it comes: the
    version it started on, then, from each :class:`~ledgerflow.model.ExecutionMigrated` record
    on, the version that record moves to. ``definition`` is used while it is that version;
    ``versions`` gives the definition of any other version of the workflow, by number. Without
    ``versions``, a ledger (or snapshot) on another version than ``definition`` raises
    :class:`LedgerError`.
    """
    current = definition
    for record in records:
        if isinstance(record, ExecutionStarted) and state is None:
            pinned = record.version
        elif isinstance(record, ExecutionMigrated):
            pinned = record.to_version
        else:
            pinned = current.version if state is None else state.version
        if pinned != current.version and versions is not None:
            current = versions(pinned)
        state = apply(current, state, record)
    if state is None:
        raise LedgerError("an empty ledger has no state")
    return state


def decide(definition: Definition, state: State, event: Event | EventReceived) -> Decision:
    """What ``event`` does to an execution in ``state``.

    The first transition written for the current state and the event whose roles admit the
    event's role and whose condition holds is accepted, with the context after its ``set``
    assignments and the steps to run. Otherwise the event is rejected with the most telling
    reason: the execution is finished, the event is unknown, its payload breaks its schema, no
    transition leaves this state on it, the role is not permitted, the condition is false, or
    an expression failed.
    """
    if state.status is not Status.ACTIVE:
        return Rejected(
            reason=RejectReason.EXECUTION_FINISHED,
            detail=f"the execution is {state.status.value} in state {state.name!r}",
        )
    if event.name not in definition.known_events:
        return Rejected(
            reason=RejectReason.UNKNOWN_EVENT,
            detail=f"{definition.name} v{definition.version} has no event {event.name!r}",
        )
    errors = definition.payload_errors(event.name, event.payload)
    if errors:
        return Rejected(reason=RejectReason.PAYLOAD_INVALID, detail="; ".join(errors))
    candidates = definition.candidates(state.name, event.name)
    if not candidates:
        return Rejected(
            reason=RejectReason.NO_TRANSITION,
            detail=f"no transition leaves {state.name!r} on {event.name!r}",
        )
    variables = _variables(state, event)
    trusted = isinstance(event, EventReceived) and event.origin != "client"
    refusals: list[Rejected] = []
    for candidate in candidates:
        refusal = _refusal(candidate, variables, event.role, trusted=trusted)
        if refusal is not None:
            refusals.append(refusal)
            continue
        try:
            assigned = candidate.assignments.render(variables)
        except ExpressionError as exc:
            refusals.append(
                Rejected(
                    reason=RejectReason.EXPRESSION_ERROR,
                    detail=f"transition {candidate.id} set: {exc}",
                )
            )
            continue
        return Accepted(
            transition=candidate.id,
            source=state.name,
            target=candidate.transition.target,
            context={**state.context, **assigned},
            steps=tuple(cs.step for cs in candidate.steps),
        )
    not_role = [r for r in refusals if r.reason is not RejectReason.ROLE_NOT_PERMITTED]
    return (not_role or refusals)[0]


def _variables(state: State, event: Event | EventReceived) -> dict[str, Any]:
    return {
        "payload": dict(event.payload),
        "context": dict(state.context),
        "role": event.role,
        "event": event.name,
        "state": state.name,
    }


def _refusal(
    candidate: CompiledTransition, variables: Mapping[str, Any], role: str | None, *, trusted: bool
) -> Rejected | None:
    roles = candidate.transition.roles
    if roles and not trusted and role not in roles:
        return Rejected(
            reason=RejectReason.ROLE_NOT_PERMITTED,
            detail=f"transition {candidate.id} permits roles {', '.join(roles)}; got {role!r}",
        )
    if candidate.condition is None:
        return None
    try:
        holds = candidate.condition.test(variables)
    except ExpressionError as exc:
        return Rejected(
            reason=RejectReason.EXPRESSION_ERROR,
            detail=f"transition {candidate.id} condition: {exc}",
        )
    if not holds:
        return Rejected(
            reason=RejectReason.CONDITION_FALSE,
            detail=f"transition {candidate.id}: condition {candidate.condition.source!r} is false",
        )
    return None


def simulate(
    definition: Definition,
    events: Iterable[Event | EventReceived],
    *,
    context: Mapping[str, JSON] | None = None,
) -> list[Record]:
    """The ledger an execution would record for ``events`` if every step succeeded with no
    result: the start, then each event followed by its decision. For tests and dry runs."""
    ledger: list[Record] = [start(definition, context=context)]
    state = fold(definition, ledger)
    for event in events:
        received = (
            event
            if isinstance(event, EventReceived)
            else EventReceived(seq=0, name=event.name, payload=event.payload, role=event.role)
        )
        received = attrs.evolve(received, seq=state.seq + 1)
        decision = decide(definition, state, received)
        new: list[Record] = [received, decision.record(seq=state.seq + 2, event_seq=received.seq)]
        if isinstance(decision, Accepted):
            new += [
                StepSucceeded(seq=state.seq + 3 + k, event_seq=received.seq, step_id=step.id)
                for k, step in enumerate(decision.steps)
            ]
        state = fold(definition, new, state)
        ledger += new
    return ledger
