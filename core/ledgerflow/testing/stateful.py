"""Property-test a workflow: :func:`check_workflow` drives executions of it with generated
events and faults, and checks after every step that the engine kept its promises and that the
workflow kept the user's.

The test is a hypothesis :class:`~hypothesis.stateful.RuleBasedStateMachine` (build the class
with :func:`workflow_machine` to run it under pytest yourself). Each example starts one
execution in a fresh :class:`~ledgerflow.testing.Harness` (``start(context)``), then sends it
events with one rule, ``send(event, fault)`` (with a ``wait`` too when the workflow has
timers), printed as ``send(event=CreateInvoice(payload={...}, role='clerk'), fault=None)``: in
a state some transition leaves, an event such a transition is on; in any other, any event the
definition knows. A client appends the event (a payload its schema
accepts, a role its transitions name), after ``wait`` seconds, and a worker processes it, with,
or without, a ``fault``: the worker dies before or after an action's effect
(:class:`~ledgerflow.testing.Crash`) or stalls past its lease
(:class:`~ledgerflow.testing.LeaseExpires`) and a fresh worker recovers the execution; the
event's wake-up is delivered again (:class:`~ledgerflow.testing.Redelivery`); the client sends
it again with the same key (:class:`~ledgerflow.testing.ClientRetry`); the worker restarts
first (:class:`~ledgerflow.testing.WorkerRestart`).

After each rule it checks: the projection equals the ledger replayed (from zero and from every
snapshot); no action ran again once its result was recorded; no event is left undecided; a
redelivered wake-up or a retried append changed nothing; once a fault struck, the execution
ends in the same ledger, state, recorded results and effects as the same events without it;
and every invariant given. A failure is shrunk by hypothesis to the shortest sequence of rules
that shows it, reported as those rules and as the execution's ledger.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeAlias, TypeVar

import attrs
import hypothesis
from hypothesis import HealthCheck, Phase, note
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from ledgerflow.definitions import Definition
from ledgerflow.engine import Engine
from ledgerflow.model import JSON, Event, Record, State, TransitionApplied, Workflow
from ledgerflow.plugins import Plugins
from ledgerflow.registry import ActionRegistry
from ledgerflow.testing import strategies
from ledgerflow.testing.harness import (
    ActionCall,
    ClientRetry,
    Crash,
    Fault,
    Harness,
    LeaseExpires,
    Redelivery,
    SimulatedCrash,
    WorkerRestart,
    _compiled,
    _Look,
)

__all__ = ["Invariant", "Observation", "check_workflow", "workflow_machine"]

DefinitionSource: TypeAlias = Definition | Workflow | str | Path
T = TypeVar("T")


@attrs.frozen(kw_only=True)
class Observation:
    """What an invariant is shown after every step of :func:`check_workflow`: the execution's
    ``state`` (replayed from its ledger), its ``ledger``, the action ``calls`` made for it,
    the ``effects`` the ``effects`` function reported (``None`` without one) and the
    ``harness`` itself, for anything else (its store, say)."""

    harness: Harness
    execution_id: str
    state: State
    ledger: tuple[Record, ...]
    calls: tuple[ActionCall, ...]
    effects: JSON = None

    @property
    def context(self) -> Mapping[str, JSON]:
        """The execution's context."""
        return self.state.context

    def applied(self, transition: str | None = None) -> list[TransitionApplied]:
        """The transitions applied so far (those named ``transition``, if given), in order."""
        return [
            r
            for r in self.ledger
            if isinstance(r, TransitionApplied) and transition in (None, r.transition)
        ]


Invariant: TypeAlias = Callable[[Observation], object]
"""A property of every execution: it fails by raising :class:`AssertionError` or returning
``False``; anything else (``True``, ``None``) passes."""


def check_workflow(
    definition: DefinitionSource,
    *,
    actions: ActionRegistry | None = None,
    setup: Callable[[Engine], object] | None = None,
    invariants: Iterable[Invariant] = (),
    effects: Callable[[Harness], JSON] | None = None,
    payloads: Mapping[str, st.SearchStrategy[Mapping[str, JSON]]] | None = None,
    context: Mapping[str, JSON] | st.SearchStrategy[Mapping[str, JSON]] | None = None,
    faults: bool = True,
    url: str = "sqlite://",
    plugins: Plugins | None = None,
    max_examples: int | None = None,
    steps: int = 5,
    settings: hypothesis.settings | None = None,
) -> None:
    """Property-test ``definition``: run :func:`workflow_machine`'s state machine for
    ``max_examples`` examples (by default, the current hypothesis profile's: 100 unless your
    profile says otherwise) of up to ``steps`` rules each (the start, then events); return
    quietly, or raise the first failure, shrunk, with the failing rules and the execution's
    ledger attached (pytest prints them).

    ``actions`` and ``setup`` give the engine what the workflow's steps call (as for
    :class:`~ledgerflow.testing.Harness`); ``invariants`` are the workflow's own promises (see
    :data:`Invariant`); ``effects(harness)`` returns the effects to compare after a fault (the
    rows of the app's tables, say: JSON values; an in-memory store is emptied between examples,
    but effects kept outside it should be told apart by ``harness.executions``).
    ``payloads`` replaces the strategy of an
    event's payload; ``context`` is the initial context, or a strategy for it. ``faults=False``
    leaves out crashes and lost leases. ``url`` is the store of every example (a fresh
    in-memory SQLite database each by default; any other URL is shared by the examples, each
    with a tenant of its own). ``settings`` replaces the hypothesis settings built from
    ``max_examples`` and ``steps`` (no deadline: examples run real transactions).
    """
    machine = workflow_machine(
        definition,
        actions=actions,
        setup=setup,
        invariants=invariants,
        effects=effects,
        payloads=payloads,
        context=context,
        faults=faults,
        url=url,
        plugins=plugins,
    )
    chosen = settings or hypothesis.settings(
        max_examples=max_examples
        if max_examples is not None
        else hypothesis.settings().max_examples,
        stateful_step_count=steps,
        deadline=None,
        report_multiple_bugs=False,
        suppress_health_check=[HealthCheck.too_slow],
        # no "explain" phase: it reruns the failure many times to point at lines of code,
        # and the ledger already says what went wrong
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    )
    try:
        run_state_machine_as_test(machine, settings=chosen)
    finally:
        machine.close_idle()  # type: ignore[attr-defined]


def workflow_machine(
    definition: DefinitionSource,
    *,
    actions: ActionRegistry | None = None,
    setup: Callable[[Engine], object] | None = None,
    invariants: Iterable[Invariant] = (),
    effects: Callable[[Harness], JSON] | None = None,
    payloads: Mapping[str, st.SearchStrategy[Mapping[str, JSON]]] | None = None,
    context: Mapping[str, JSON] | st.SearchStrategy[Mapping[str, JSON]] | None = None,
    faults: bool = True,
    url: str = "sqlite://",
    plugins: Plugins | None = None,
) -> type[RuleBasedStateMachine]:
    """The state machine :func:`check_workflow` runs, as a class (arguments as there).

    Run it under pytest with its ``TestCase``, and hypothesis settings of your own::

        InvoiceMachine = workflow_machine(definition, setup=invoice_app.setup)
        TestInvoice = InvoiceMachine.TestCase
        TestInvoice.settings = settings(max_examples=50, stateful_step_count=10)
    """
    compiled = _compiled(definition)
    checks = tuple(invariants)
    shared = plugins if plugins is not None else Plugins()
    most_calls = max((2 * len(ct.steps) for ct in compiled.transitions), default=0)
    fault: st.SearchStrategy[Fault | None] = (
        strategies.faults(max_call=most_calls) if faults else st.none()
    )
    contexts: st.SearchStrategy[Mapping[str, JSON]] = (
        context if isinstance(context, st.SearchStrategy) else st.just(dict(context or {}))
    )
    timed = any(ct.transition.after is not None for ct in compiled.transitions)
    waits = st.one_of(st.just(0.0), strategies.clock_advances(compiled))
    faulty = fault.map(_Shown)

    # what the send rule draws in each state (see there): an event some transition leaving
    # the state is on, but, as in swarm testing, each example first sets some events aside
    # (drawn once, half of them on average), and draws from the others when any of the
    # state's events is left, so that some examples send the same few events over and over
    # (credit after credit, with no close) and go deeper than a uniform choice would
    anything = strategies.events(compiled, payloads=payloads).map(_Sent)
    known = sorted(compiled.known_events)
    leaving = {
        state: tuple(name for name in known if compiled.candidates(state, name))
        for state in compiled.workflow.states
    }
    set_aside = st.shared(
        st.lists(st.booleans(), min_size=len(known), max_size=len(known)).map(
            lambda flags: frozenset(name for name, aside in zip(known, flags, strict=True) if aside)
        ),
        key=("ledgerflow events set aside", compiled.name, compiled.version),
    )
    drawn_from: dict[tuple[str, ...], st.SearchStrategy[_Sent]] = {}

    def sendable(chosen: tuple[Any, frozenset[str]]) -> st.SearchStrategy[_Sent]:
        machine, aside = chosen
        names = leaving[machine.state_name]
        if not names:
            return anything
        names = tuple(name for name in names if name not in aside) or names
        if names not in drawn_from:
            drawn_from[names] = strategies.events(compiled, names=names, payloads=payloads).map(
                _Sent
            )
        return drawn_from[names]

    choices = st.tuples(st.runner(), set_aside).flatmap(sendable)

    numbers = itertools.count(1)

    class WorkflowMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.number = next(numbers)
            self.subject = self._harness()
            self.reference: Harness | None = None
            self.execution_id = ""
            self.reference_id = ""
            self.script: list[tuple[str, Any, str | None, float]] = []
            """What the client did: ``(kind, event or context, key, seconds into the example)``,
            the time being when the subject processed it."""
            self.started_at = 0.0
            self.reference_started_at = 0.0
            self.story: list[str] = []
            self.sent: list[tuple[Event, str, str]] = []
            self.state_name = compiled.workflow.initial_state
            self.latest: _Look | None = None
            """The subject's execution as the last rule left it, read as that rule ended (the
            invariant that follows checks it, instead of reading it again)."""
            self.reference_latest: _Look | None = None
            """The same of the reference's execution."""

        idle: ClassVar[list[Harness]] = []

        @classmethod
        def close_idle(cls) -> None:
            """Close the harnesses kept for the next examples."""
            while cls.idle:
                cls.idle.pop().close()

        def _harness(self) -> Harness:
            if self.idle:
                return self.idle.pop()
            return Harness(
                compiled,
                url=url,
                actions=actions,
                setup=setup,
                tenant=f"check-{uuid.uuid4().hex[:8]}",
                plugins=shared,
                # a lease a crashed worker leaves expires in a moment of the clock: recovery
                # moves time on by no more than that, so timers fire as without the crash
                lease_ttl=0.01,
            )

        # ------------------------------------------------------------------------------------

        @initialize(context=contexts)
        def start(self, context: Mapping[str, JSON]) -> None:
            with self._reporting():
                self.execution_id = f"x-{uuid.uuid4().hex[:12]}"
                self.subject.start(
                    compiled.name,
                    version=compiled.version,
                    context=context,
                    execution_id=self.execution_id,
                )
                self.started_at = self.subject.clock.now
                self.script.append(("start", dict(context), None, 0.0))
                self.story.append(f"started with context {_short(dict(context))}")

        # one rule sends every event: in a state some transition leaves, one of the events
        # such a transition is on (with a payload its schema accepts and a role, permitted or
        # not); in any other state (a finished execution, say), any event, which is rejected
        # and must change nothing. One rule, not one per event: hypothesis's swarm testing
        # switches rules off for a whole example, and an example whose state has every one of
        # its events switched off is thrown away, work done and all
        if timed:

            @rule(event=choices, wait=waits, fault=faulty)
            def send(self, event: _Sent, wait: float, fault: _Shown[Fault | None]) -> None:
                with self._reporting():
                    self._send(event.event, wait, fault.value)

        else:

            @rule(event=choices, fault=faulty)
            def send(self, event: _Sent, fault: _Shown[Fault | None]) -> None:
                with self._reporting():
                    self._send(event.event, 0.0, fault.value)

        @invariant()
        def keeps_its_promises(self) -> None:
            if not self.execution_id:
                return
            with self._reporting():
                subject, x = self.subject, self.execution_id
                look, self.latest = self.latest, None
                if look is None:
                    look = subject._look(x)
                subject._check(look)
                pending = [f"{e.seq} {e.record.kind}" for e in look.pending]
                assert not pending, f"events left undecided after processing: {pending}"
                # the effects now, asked once for the comparison and the invariants
                seen = self._effects(subject) if self.reference is not None or checks else None
                if self.reference is not None:
                    expected, self.reference_latest = self.reference_latest, None
                    if expected is None:
                        expected = self.reference._look(self.reference_id)
                    reference = self.reference
                    _same(
                        self._observed(reference, expected, self._effects(reference)),
                        self._observed(subject, look, seen),
                        "after a fault and its recovery the execution differs from the same "
                        "events without the fault",
                    )
                if checks:
                    observation = Observation(
                        harness=subject,
                        execution_id=x,
                        state=look.replayed,
                        ledger=tuple(look.records),
                        calls=tuple(subject.calls_of(x)),
                        effects=seen,
                    )
                    for check in checks:
                        name = getattr(check, "__name__", repr(check))
                        try:
                            held = check(observation)
                        except AssertionError as exc:
                            raise AssertionError(f"invariant {name} does not hold: {exc}") from exc
                        if held is False:
                            # raised, not asserted: the message stays the same whether or not
                            # pytest rewrites this module's asserts (it does for an installed
                            # package whose pytest plugin is loaded by entry point)
                            raise AssertionError(f"invariant {name} does not hold")

        def teardown(self) -> None:
            # an in-memory harness is emptied and kept for the next example: building one
            # costs more than most examples' events
            for harness in (self.subject, self.reference):
                if harness is None:
                    continue
                if harness.store.in_memory and len(self.idle) < 4:
                    harness.reset()
                    self.idle.append(harness)
                else:
                    harness.close()

        # ------------------------------------------------------------------------------------

        def _send(self, event: Event, wait: float, fault: Fault | None) -> None:
            subject, x = self.subject, self.execution_id
            self.latest = self.reference_latest = None
            if wait:
                subject.advance(wait)
                self.script.append(("wait", None, None, self._now()))
                subject.process()
                self._follow()
            key = f"send-{len(self.sent) + 1}"
            if isinstance(fault, WorkerRestart):
                subject.restart()
            event_id = subject.send(x, event, key=key, process=False)
            self.sent.append((event, key, event_id))
            self.script.append(("send", event, key, self._now()))
            what = (f"after {wait} seconds, " if wait else "") + f"sent {_event(event)}"
            if self.reference is not None:
                self.reference.send(self.reference_id, event, key=key, process=False)
            # the event just sent is the only work if the last processing left none at this
            # time of the clock (the harness knows): it is then processed without a look for
            # work first; the execution is read as the processing ends, in the transaction of
            # its last look for work: one read serves the story, the next rule's
            # preconditions, the comparisons below and the invariant after this rule
            look: _Look | None = None
            if isinstance(fault, Crash | LeaseExpires):
                subject.arm(fault)
                try:
                    _, look = subject._process([x], look=x)
                except SimulatedCrash:
                    _, where = subject.faults[-1]
                    subject.recover()
                    what += f"; {fault} ({where}); a fresh worker recovered"
                    self._ensure_reference()  # the same events, this one included
                else:
                    what += f"; {fault}: not reached"
                subject.disarm()
            else:
                _, look = subject._process([x], look=x)
                if fault is not None:
                    what += f"; {fault}"
            self._follow(last=True)
            if look is None:
                look = subject._look(x)
            found = look.projection
            self.state_name = found.state
            self.story.append(f"{what} -> {found.state} ({found.status.value})")
            if isinstance(fault, Redelivery):
                before = self._observed(subject, look, self._effects(subject))
                subject.redeliver(x)
                look = subject._look(x)
                _same(
                    before,
                    self._observed(subject, look, self._effects(subject)),
                    "a wake-up delivered again changed the execution",
                )
            elif isinstance(fault, ClientRetry):
                before = self._observed(subject, look, self._effects(subject))
                again = subject.send(x, event, key=key, process=False)
                assert again == event_id, (
                    f"a retried append (key {key}) got event id {again}, not {event_id}"
                )
                _, look = subject._process(look=x)
                if look is None:
                    look = subject._look(x)
                _same(
                    before,
                    self._observed(subject, look, self._effects(subject)),
                    f"a retried append (key {key}) changed the execution",
                )
            self.latest = look

        def _now(self) -> float:
            """Seconds since the example started, by the subject's clock."""
            return self.subject.clock.now - self.started_at

        def _follow(self, until: float | None = None, *, last: bool = False) -> None:
            """Bring the reference's clock to the subject's (or to ``until`` seconds into the
            example) and process there: it fires the same timers at the same time, so the two
            ledgers agree whatever time a recovery took. After the ``last`` processing of a
            rule, the reference's execution is read as the processing ends, for the
            invariant."""
            reference = self.reference
            if reference is None:
                return
            target = self.reference_started_at + (self._now() if until is None else until)
            if target > reference.clock.now:
                reference.advance(target - reference.clock.now)
            _, self.reference_latest = reference._process(
                [self.reference_id], look=self.reference_id if last else None
            )

        def _ensure_reference(self) -> None:
            """The same execution without faults: replay the client's script so far, each step
            at the time the subject took it (the event that struck, at the time it was
            recovered)."""
            if self.reference is not None:
                return
            reference = self._harness()
            self.reference = reference
            self.reference_id = f"{self.execution_id}-r"
            self.reference_started_at = reference.clock.now
            *before, last = self.script
            for kind, value, key, at in before:
                if kind == "start":
                    reference.start(
                        compiled.name,
                        version=compiled.version,
                        context=value,
                        execution_id=self.reference_id,
                    )
                    continue
                if kind == "send":
                    reference.send(self.reference_id, value, key=key, process=False)
                self._follow(at)
            kind, value, key, at = last
            assert kind == "send"
            reference.send(self.reference_id, value, key=key, process=False)

        def _effects(self, harness: Harness) -> JSON:
            """The effects the ``effects`` function reports of ``harness`` now (``None``
            without one)."""
            return effects(harness) if effects is not None else None

        def _observed(self, harness: Harness, look: _Look, seen: JSON) -> dict[str, Any]:
            """What must not differ: the ledger (times left out), the projection, the recorded
            action results and the effects (``seen``, as :meth:`_effects` reported them), with
            ids made comparable between harnesses."""
            names = {look.execution_id: "<execution>", harness.tenant: "<tenant>"}
            names.update({e.event_id: f"<event {e.seq}>" for e in look.history})
            projection = look.projection
            observed: dict[str, Any] = {
                "ledger": [_plain(r) for r in look.records],
                "projection": {
                    "state": projection.state,
                    "status": projection.status.value,
                    "context": projection.context,
                    "seq": projection.seq,
                },
                "results": look.results,
            }
            if effects is not None:
                observed["effects"] = seen
            return _renamed(observed, names)  # type: ignore[no-any-return]

        @contextlib.contextmanager
        def _reporting(self) -> Iterator[None]:
            try:
                yield
            except BaseException:
                note(self._report())
                raise

        def _report(self) -> str:
            lines = ["What happened, step by step:"]
            lines += [f"  {n}. {line}" for n, line in enumerate(self.story, 1)]
            if self.execution_id:
                with contextlib.suppress(Exception):
                    lines += ["", "The ledger:", self.subject.render(self.execution_id)]
                if self.reference is not None:
                    with contextlib.suppress(Exception):
                        lines += [
                            "",
                            "The ledger of the same events without faults:",
                            self.reference.render(self.reference_id),
                        ]
            return "\n".join(lines)

    WorkflowMachine.__name__ = WorkflowMachine.__qualname__ = f"{_identifier(compiled.name)}Machine"
    return WorkflowMachine


class _Sent:
    """A drawn event, printed as what was sent: ``Submit(payload={'amount': 101},
    role='employee')``."""

    __slots__ = ("event",)

    def __init__(self, event: Event) -> None:
        self.event = event

    def __repr__(self) -> str:
        return f"{self.event.name}(payload={dict(self.event.payload)!r}, role={self.event.role!r})"


class _Shown(Generic[T]):
    """A drawn value that hypothesis prints with its own ``repr``: its pretty-printer, reused
    from step to step, sometimes mistakes a new attrs object for one it is still printing and
    shows ``Event(...)``."""

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


def _identifier(name: str) -> str:
    kept = "".join(c if c.isalnum() else "_" for c in name)
    return kept if kept[:1].isalpha() else f"W{kept}"


def _event(event: Event) -> str:
    by = f" by {event.role}" if event.role is not None else ""
    return f"{event.name}{by} {_short(dict(event.payload))}"


def _short(value: JSON) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=repr)


def _plain(record: Record) -> dict[str, Any]:
    data = attrs.asdict(record, recurse=True)
    data["kind"] = record.kind
    for timing in ("started_at", "duration"):
        data.pop(timing, None)
    return data


def _renamed(value: Any, names: Mapping[str, str]) -> Any:
    """``value`` with every id in ``names`` replaced by its placeholder, wherever it occurs
    (as a whole string, inside one, or as a key)."""
    if isinstance(value, str):
        for old, new in names.items():
            if old and old in value:
                value = value.replace(old, new)
        return value
    if isinstance(value, Mapping):
        return {_renamed(k, names): _renamed(v, names) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_renamed(v, names) for v in value]
    return value


def _same(expected: Mapping[str, Any], found: Mapping[str, Any], what: str) -> None:
    differing: Sequence[str] = [k for k in expected if expected[k] != found.get(k)]
    if not differing:
        return
    details = []
    for part in differing:
        details.append(f"  {part}: expected {_short(expected[part])}")
        details.append(f"  {' ' * len(part)}  found    {_short(found.get(part))}")
    raise AssertionError(f"{what} ({', '.join(differing)} differ):\n" + "\n".join(details))
