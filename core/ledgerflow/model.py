"""The values ledgerflow is made of: workflow definitions, ledger records, state and decisions.

Everything here is an immutable attrs class with no behaviour beyond small derived properties.
Definitions are plain data that may still be invalid; :class:`ledgerflow.definitions.Definition`
is the validated, compiled form the state machine runs. JSON-valued fields (payloads, contexts,
parameters, results) hold plain ``dict`` / ``list`` values: treat them as read-only, as the
state machine does.

Ledger records carry a stable ``kind`` tag (``"event_received"``, ``"transition_applied"``, …)
that names them in storage; renaming or moving a class never changes how stored history decodes.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Literal, TypeAlias

import attrs

__all__ = [
    "ANY_STATE",
    "JSON",
    "Accepted",
    "Backoff",
    "Compensation",
    "ContextUpdated",
    "Decision",
    "Event",
    "EventReceived",
    "EventRejected",
    "EventSpec",
    "ExecutionFailed",
    "ExecutionMigrated",
    "ExecutionResumed",
    "ExecutionStarted",
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
    "TransitionReverted",
    "Workflow",
]

JSON: TypeAlias = Any
"""A JSON value: ``None``, ``bool``, ``int``, ``float``, ``str``, ``list`` or ``dict``."""

ANY_STATE = "*"
"""The source state that matches every non-terminal state."""


def _tuple(value: Any) -> tuple[Any, ...]:
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def _steps(value: Iterable[Step]) -> tuple[Step, ...]:
    return tuple(value)


def _transitions(value: Iterable[Transition]) -> tuple[Transition, ...]:
    return tuple(value)


def _dict(value: Mapping[str, Any] | None) -> dict[str, Any]:
    return {} if value is None else dict(value)


# --------------------------------------------------------------------------------------------
# Definitions
# --------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Backoff:
    """Exponential backoff between retry attempts, in seconds: ``initial * multiplier**n``,
    never more than ``maximum``."""

    initial: float = 1.0
    multiplier: float = 2.0
    maximum: float = 60.0


ErrorStrategy: TypeAlias = Literal["stop", "continue", "retry", "compensate"]


@attrs.frozen(kw_only=True)
class OnError:
    """What happens when a step fails.

    - ``stop``: the transition's remaining steps are not started and the execution fails;
    - ``continue``: the failure is recorded and steps that do not depend on this one go on;
    - ``retry``: the step is tried up to ``attempts`` times in all, waiting per ``backoff``
      between tries; when every attempt failed it fails as under ``stop``;
    - ``compensate``: the transition's completed steps are undone, newest first, through
      their compensating actions, and the transition is reverted: the execution is back in the
      state it left, active. If a compensation fails, the execution fails instead.

    A failed execution rejects later events until :meth:`ledgerflow.engine.Engine.retry`
    resumes it from the point of failure.
    """

    strategy: ErrorStrategy = "stop"
    attempts: int = 1
    backoff: Backoff = Backoff()


@attrs.frozen(kw_only=True)
class Compensation:
    """The action that undoes a step, with its parameters (literal values or ``{expr: …}``)."""

    action: str
    params: Mapping[str, JSON] = attrs.field(factory=dict, converter=_dict)


@attrs.frozen(kw_only=True)
class Step:
    """One action a transition runs.

    ``params`` maps parameter names to values: any JSON value is taken literally, except a
    mapping with the single key ``expr``, whose string is an expression evaluated over
    ``payload``, ``context``, ``role``, ``event``, ``state`` and ``steps`` (earlier steps'
    results, ``steps.<id>.result``). ``depends_on`` names steps of the same transition that must
    succeed first; steps with no path between them may run in parallel.
    """

    id: str
    action: str
    params: Mapping[str, JSON] = attrs.field(factory=dict, converter=_dict)
    depends_on: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    on_error: OnError = OnError()
    compensate: Compensation | None = None


@attrs.frozen(kw_only=True)
class Transition:
    """A move from one of ``source`` states (or :data:`ANY_STATE`) to ``target`` on ``on``.

    The transition applies when the event's role is in ``roles`` (any role when ``roles`` is
    empty; roles are not checked for events fired by ledgerflow's own timers), and
    ``condition``, an expression over ``payload``, ``context``, ``role``, ``event`` and
    ``state``, is true (always when absent). ``set`` assigns context keys from values or
    ``{expr: …}`` expressions when the transition applies. ``after`` (a duration such as
    ``48h`` or ``PT48H``) arms a timer that fires ``on`` when the execution has stayed that long
    in a source state. ``at``, an expression over ``context`` and ``state``, arms one that
    fires ``on`` at the time it gives when the source state is entered: a timestamp
    (``timestamp(context.due) + duration("24h")``), an ISO 8601 string, or seconds since the
    epoch; ``null`` arms nothing. A transition has ``after`` or ``at``, not both.
    """

    name: str | None = None
    source: tuple[str, ...] = attrs.field(converter=_tuple)
    target: str
    on: str
    condition: str | None = None
    roles: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    set: Mapping[str, JSON] = attrs.field(factory=dict, converter=_dict)
    steps: tuple[Step, ...] = attrs.field(default=(), converter=_steps)
    after: str | None = None
    at: str | None = None


@attrs.frozen(kw_only=True)
class EventSpec:
    """What a workflow declares about one event: a description and a JSON Schema that every
    payload of the event must satisfy."""

    description: str = ""
    payload: Mapping[str, JSON] | None = None


@attrs.frozen(kw_only=True)
class Workflow:
    """A workflow definition as written: a named, versioned state machine.

    This is plain data and may be invalid; :func:`ledgerflow.definitions.compile_workflow` turns
    it into a :class:`~ledgerflow.definitions.Definition` or reports every problem.
    """

    name: str
    version: int
    description: str = ""
    initial_state: str
    states: tuple[str, ...] = attrs.field(converter=_tuple)
    terminal_states: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    events: Mapping[str, EventSpec] = attrs.field(factory=dict, converter=_dict)
    transitions: tuple[Transition, ...] = attrs.field(default=(), converter=_transitions)


@attrs.frozen(kw_only=True)
class Problem:
    """One thing wrong with a definition: where (``source`` file and ``location`` within it) and
    what."""

    message: str
    location: str = ""
    source: str = ""

    def __str__(self) -> str:
        where = ": ".join(part for part in (self.source, self.location) if part)
        return f"{where}: {self.message}" if where else self.message


# --------------------------------------------------------------------------------------------
# Ledger records
# --------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Event:
    """An event as a client submits it: a name, a JSON payload and the sender's role."""

    name: str
    payload: Mapping[str, JSON] = attrs.field(factory=dict, converter=_dict)
    role: str | None = None


Origin: TypeAlias = Literal["client", "timer", "system"]


@attrs.frozen(kw_only=True)
class ExecutionStarted:
    """The first record of every ledger: which workflow version, and the initial context."""

    kind: ClassVar[str] = "execution_started"
    seq: int
    workflow: str
    version: int
    context: Mapping[str, JSON] = attrs.field(factory=dict, converter=_dict)


@attrs.frozen(kw_only=True)
class EventReceived:
    """An event appended to the ledger, waiting to be decided. ``origin`` says who sent it."""

    kind: ClassVar[str] = "event_received"
    seq: int
    name: str
    payload: Mapping[str, JSON] = attrs.field(factory=dict, converter=_dict)
    role: str | None = None
    origin: Origin = "client"


@attrs.frozen(kw_only=True)
class TransitionApplied:
    """The decision that event ``event_seq`` moved the execution from ``source`` to ``target``;
    ``context`` is the whole context after the transition's assignments."""

    kind: ClassVar[str] = "transition_applied"
    seq: int
    event_seq: int
    transition: str
    source: str
    target: str
    context: Mapping[str, JSON] = attrs.field(factory=dict, converter=_dict)


class RejectReason(enum.StrEnum):
    """Why an event was not applied."""

    UNKNOWN_EVENT = "unknown_event"
    NO_TRANSITION = "no_transition"
    CONDITION_FALSE = "condition_false"
    ROLE_NOT_PERMITTED = "role_not_permitted"
    PAYLOAD_INVALID = "payload_invalid"
    EXECUTION_FINISHED = "execution_finished"
    EXPRESSION_ERROR = "expression_error"
    NOT_FAILED = "not_failed"
    """A retry was asked for an execution that is no longer failed (another retry mended it)."""


@attrs.frozen(kw_only=True)
class EventRejected:
    """The decision that event ``event_seq`` changes nothing, and why."""

    kind: ClassVar[str] = "event_rejected"
    seq: int
    event_seq: int
    reason: RejectReason
    detail: str = ""


@attrs.frozen(kw_only=True)
class StepSucceeded:
    """Step ``step_id`` of the transition applied for ``event_seq`` returned ``result``."""

    kind: ClassVar[str] = "step_succeeded"
    seq: int
    event_seq: int
    step_id: str
    result: JSON = None
    attempts: int = 1
    started_at: float = 0.0
    """When the step's first attempt started (seconds since the epoch)."""
    duration: float = 0.0
    """Seconds from the first attempt's start to the outcome, backoff included."""


@attrs.frozen(kw_only=True)
class StepFailed:
    """Step ``step_id`` failed for good after ``attempts`` tries; ``error`` says why. A failed
    compensation is recorded as a ``StepFailed`` whose ``error`` starts with ``compensation:``."""

    kind: ClassVar[str] = "step_failed"
    seq: int
    event_seq: int
    step_id: str
    error: str
    attempts: int = 1
    started_at: float = 0.0
    duration: float = 0.0


@attrs.frozen(kw_only=True)
class StepCompensated:
    """Step ``step_id`` was undone by its compensation."""

    kind: ClassVar[str] = "step_compensated"
    seq: int
    event_seq: int
    step_id: str
    result: JSON = None
    attempts: int = 1
    started_at: float = 0.0
    duration: float = 0.0


@attrs.frozen(kw_only=True)
class ExecutionFailed:
    """The execution stopped because of ``reason``: later events are rejected until a retry
    (:class:`ExecutionResumed`) mends it. ``compensating`` says the failure happened while
    undoing event ``event_seq``'s transition, so a retry resumes the compensation."""

    kind: ClassVar[str] = "execution_failed"
    seq: int
    event_seq: int
    reason: str
    compensating: bool = False


@attrs.frozen(kw_only=True)
class TransitionReverted:
    """Every completed step of event ``event_seq``'s transition was compensated, so the
    transition is undone: the execution is back in ``target`` (the state the transition left)
    with ``context`` (the context before it), and active."""

    kind: ClassVar[str] = "transition_reverted"
    seq: int
    event_seq: int
    transition: str
    source: str
    target: str
    context: Mapping[str, JSON] = attrs.field(factory=dict, converter=_dict)


@attrs.frozen(kw_only=True)
class ExecutionResumed:
    """A retry (event ``event_seq``, sent by the system) resumed the failed execution: the
    steps of event ``retried_seq`` that have no recorded outcome run again (or, when the failure
    came while compensating, the compensation does). The execution is active again, or
    completed if it is in a terminal state, until the retry's own outcome is recorded."""

    kind: ClassVar[str] = "execution_resumed"
    seq: int
    event_seq: int
    retried_seq: int
    requested_by: str | None = None


@attrs.frozen(kw_only=True)
class ContextUpdated:
    """Step ``step_id`` (a ``ledgerflow.set_context`` step) merged ``values`` into the
    execution's context."""

    kind: ClassVar[str] = "context_updated"
    seq: int
    event_seq: int
    step_id: str
    values: Mapping[str, JSON] = attrs.field(factory=dict, converter=_dict)


@attrs.frozen(kw_only=True)
class ExecutionMigrated:
    """The execution was moved, while in ``state``, from version ``from_version`` of its
    workflow to ``to_version``, as ``requested_by`` asked
    (:meth:`ledgerflow.engine.Engine.migrate`).

    The records before this one were decided under the old version; this one and every later
    one are folded under the new version, which the execution is pinned to from here on. The
    state and context do not change.
    """

    kind: ClassVar[str] = "execution_migrated"
    seq: int
    from_version: int
    to_version: int
    state: str
    requested_by: str | None = None


Record: TypeAlias = (
    ExecutionStarted
    | EventReceived
    | TransitionApplied
    | EventRejected
    | StepSucceeded
    | StepFailed
    | StepCompensated
    | ExecutionFailed
    | ContextUpdated
    | TransitionReverted
    | ExecutionResumed
    | ExecutionMigrated
)
"""Any record of a ledger."""

RECORD_TYPES: tuple[type[Record], ...] = (
    ExecutionStarted,
    EventReceived,
    TransitionApplied,
    EventRejected,
    StepSucceeded,
    StepFailed,
    StepCompensated,
    ExecutionFailed,
    ContextUpdated,
    TransitionReverted,
    ExecutionResumed,
    ExecutionMigrated,
)


# --------------------------------------------------------------------------------------------
# State and decisions
# --------------------------------------------------------------------------------------------


class Status(enum.StrEnum):
    """Where an execution stands as a whole."""

    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"


@attrs.frozen(kw_only=True)
class State:
    """An execution's state as folded from its ledger.

    ``seq`` is the last record folded; ``decided_seq`` the last event that was decided (applied
    or rejected): every :class:`EventReceived` after it is still to be decided.
    """

    workflow: str
    version: int
    name: str
    context: Mapping[str, JSON] = attrs.field(factory=dict, converter=_dict)
    status: Status = Status.ACTIVE
    seq: int = 0
    decided_seq: int = 0


@attrs.frozen(kw_only=True)
class Accepted:
    """The event applies: move to ``target`` with ``context``, then run ``steps`` (in an order
    that respects ``depends_on``)."""

    transition: str
    source: str
    target: str
    context: Mapping[str, JSON] = attrs.field(factory=dict, converter=_dict)
    steps: tuple[Step, ...] = ()

    accepted: ClassVar[bool] = True

    def record(self, *, seq: int, event_seq: int) -> TransitionApplied:
        """The ledger record of this decision."""
        return TransitionApplied(
            seq=seq,
            event_seq=event_seq,
            transition=self.transition,
            source=self.source,
            target=self.target,
            context=self.context,
        )


@attrs.frozen(kw_only=True)
class Rejected:
    """The event changes nothing, for ``reason``; ``detail`` is a sentence for people."""

    reason: RejectReason
    detail: str

    accepted: ClassVar[bool] = False

    def record(self, *, seq: int, event_seq: int) -> EventRejected:
        """The ledger record of this decision."""
        return EventRejected(seq=seq, event_seq=event_seq, reason=self.reason, detail=self.detail)


Decision: TypeAlias = Accepted | Rejected
"""What :func:`ledgerflow.machine.decide` answers."""
