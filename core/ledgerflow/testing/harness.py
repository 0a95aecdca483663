"""The harness: an engine on a throwaway store, a clock that moves only when told, and a record
of every action call, for tests.

:class:`Harness` builds a real :class:`~ledgerflow.engine.Engine` over a real
:class:`~ledgerflow.store.sql.SQLStore` (SQLite in memory by default, or any store URL) and
processes events inline, under a lease it takes the way a worker does, or through a real
:class:`~ledgerflow.worker.Worker`. Nothing is mocked: the events, leases, idempotency keys and
action results live in the store, and a fault is injected by the mechanisms a real failure would
use (a worker that dies mid-event, a lease that expires, a wake-up delivered twice, a process
restarted).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeAlias

import attrs
import sqlalchemy as sa

from ledgerflow import definitions as definitions_module
from ledgerflow import machine
from ledgerflow.definitions import Definition
from ledgerflow.engine import Engine, Execution, HistoryEntry, Lease
from ledgerflow.errors import ExecutionNotFoundError, LeaseLostError
from ledgerflow.executor import GraphRunner
from ledgerflow.hookspecs import StepInfo, hookimpl
from ledgerflow.model import (
    JSON,
    ContextUpdated,
    Event,
    EventReceived,
    EventRejected,
    ExecutionFailed,
    ExecutionMigrated,
    ExecutionResumed,
    ExecutionStarted,
    Record,
    State,
    StepCompensated,
    StepFailed,
    StepSucceeded,
    TransitionApplied,
    TransitionReverted,
    Workflow,
)
from ledgerflow.plugins import Plugins
from ledgerflow.registry import ActionRegistry
from ledgerflow.store import ALL_TENANTS
from ledgerflow.store.schema import action_results, timers
from ledgerflow.store.sql import _PENDING_EXECUTIONS, SQLStore, StoredRecord
from ledgerflow.worker import Worker

__all__ = [
    "DEFAULT_START",
    "ActionCall",
    "ClientRetry",
    "Clock",
    "Crash",
    "Fault",
    "Harness",
    "LeaseExpires",
    "Redelivery",
    "SimulatedCrash",
    "StepFault",
    "WorkerRestart",
    "render_ledger",
]

DEFAULT_START = 1_767_225_600.0
"""Where a :class:`Clock` starts unless told otherwise: 2026-01-01 00:00:00 UTC."""

_PROBE = "ledgerflow.testing"
_MEMORY_URLS = ("sqlite://", "sqlite:///:memory:")

# what a worker's poll looks for: a timer due, and executions with an undecided event whose
# lease is free (the store's pending_executions asks the same)
_DUE_TIMER = (
    sa.select(timers.c.id)
    .where(timers.c.state == "armed", timers.c.due_at <= sa.bindparam("now"))
    .limit(1)
)
_RESULTS = sa.select(action_results.c.key, action_results.c.result).where(
    action_results.c.execution_id == sa.bindparam("execution_id"),
    action_results.c.tenant == sa.bindparam("tenant"),
)
_RECORDED_KEYS = sa.select(action_results.c.key).where(
    action_results.c.execution_id.in_(sa.bindparam("executions", expanding=True)),
    action_results.c.tenant == sa.bindparam("tenant"),
)


# --------------------------------------------------------------------------------------------
# The clock
# --------------------------------------------------------------------------------------------


class Clock:
    """Time that moves only when told: seconds since the epoch, starting at ``start``.

    Call it for the time (it is the ``clock`` of the store, the engine, the step runner and the
    circuit breakers of a :class:`Harness`). :meth:`sleep` advances it instead of sleeping, so a
    step's retry backoff takes no real time. Safe to use from several threads.
    """

    def __init__(self, start: float = DEFAULT_START) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    @property
    def now(self) -> float:
        """The current time."""
        return self()

    def advance(self, seconds: float) -> float:
        """Move the time forward by ``seconds`` (never backward) and return the new time."""
        if seconds < 0:
            raise ValueError(f"a clock only moves forward; cannot advance by {seconds}")
        with self._lock:
            self._now += seconds
            return self._now

    def sleep(self, seconds: float) -> None:
        """Advance by ``seconds`` at once: what a retry's backoff does to this clock."""
        self.advance(max(seconds, 0.0))

    def __repr__(self) -> str:
        return f"Clock(now={self():.3f})"


# --------------------------------------------------------------------------------------------
# Faults and action calls
# --------------------------------------------------------------------------------------------


class SimulatedCrash(LeaseLostError):
    """The worker processing an event "died" where an armed :class:`Crash` or
    :class:`LeaseExpires` said it would.

    It derives from :class:`~ledgerflow.errors.LeaseLostError` because that is how the engine
    treats a worker that stops holding its execution mid-event: nothing of the event is
    committed, the event stays pending, and the next worker redoes what was not recorded
    (guarantee 3). Raised by :meth:`Harness.process` (and by :meth:`Harness.send`, which
    processes); :meth:`Harness.recover` then restarts the worker.
    """


CrashPoint: TypeAlias = Literal["before_effect", "after_effect"]


@attrs.frozen(kw_only=True)
class Crash:
    """The worker dies at action call number ``call`` of the next processing (1 for the first
    action called, counting every attempt and compensation): ``before_effect``, before the
    action runs; ``after_effect``, after it ran and before its result is recorded.

    A database action's effect and result commit together, so dying after its effect rolls the
    effect back; any other action's effect has happened, and it runs again after recovery
    (at least once, as documented). If the processing makes fewer calls, nothing happens.
    """

    point: CrashPoint
    call: int = 1

    def __attrs_post_init__(self) -> None:
        if self.point not in ("before_effect", "after_effect"):
            raise ValueError(f"unknown crash point {self.point!r}")
        if self.call < 1:
            raise ValueError("call counts from 1")

    def __str__(self) -> str:
        where = "before" if self.point == "before_effect" else "after"
        return f"the worker dies {where} the effect of action call {self.call}"


@attrs.frozen(kw_only=True)
class LeaseExpires:
    """The worker stalls once the result of action call number ``call`` is recorded, for
    longer than its lease: the lease expires, another worker takes the execution over, and the
    stalled worker's next write is refused (it ends in :class:`SimulatedCrash`). If the
    processing makes fewer successful calls, nothing happens."""

    call: int = 1

    def __attrs_post_init__(self) -> None:
        if self.call < 1:
            raise ValueError("call counts from 1")

    def __str__(self) -> str:
        return f"the worker's lease expires after action call {self.call} is recorded"


@attrs.frozen
class Redelivery:
    """Once the event is processed, its wake-up is delivered again (a broker's at-least-once
    delivery): a worker takes the execution and finds nothing left to do."""

    def __str__(self) -> str:
        return "its wake-up is delivered again"


@attrs.frozen
class ClientRetry:
    """The client, not sure its append went through, sends the event again with the same key:
    it gets the same event id and nothing is appended."""

    def __str__(self) -> str:
        return "the client sends it again with the same key"


@attrs.frozen
class WorkerRestart:
    """The worker process is replaced before the event is processed: a fresh engine, no
    cached definitions, ``setup`` called again."""

    def __str__(self) -> str:
        return "the worker restarts first"


StepFault: TypeAlias = Crash | LeaseExpires
"""A fault :meth:`Harness.arm` injects into the next processing."""

Fault: TypeAlias = Crash | LeaseExpires | Redelivery | ClientRetry | WorkerRestart
"""Anything that can go wrong around one event, as :func:`~ledgerflow.testing.check_workflow`
draws it: a :data:`StepFault` while it is processed, a wake-up delivered twice, a client's
retry, a worker restart."""

CallOutcome: TypeAlias = Literal["returned", "raised", "crashed"]


@attrs.frozen(kw_only=True)
class ActionCall:
    """One call of an action (one attempt of a step, or a compensation), as the harness saw it.

    ``outcome`` is ``returned`` (with ``result``), ``raised`` (with ``error``) or ``crashed``
    (an armed :class:`Crash` struck around it). ``recorded`` says whether this call's result
    is the one recorded under its ``key``: a call that returned but whose worker lost its lease
    before recording it has ``recorded`` false, and may legitimately run again. ``worker``
    counts the engines the harness built (1, then one more per restart).
    """

    key: str
    action: str
    step_id: str
    execution_id: str
    event_id: str
    compensation: bool
    params: Any
    outcome: CallOutcome
    result: JSON = None
    error: str | None = None
    recorded: bool = False
    worker: int = 1


class _Probe:
    """The harness's plugin: records every action call and springs armed faults. One probe can
    serve several harnesses sharing a :class:`Plugins`, one at a time: the one in ``target``."""

    def __init__(self) -> None:
        self.target: Harness | None = None

    @hookimpl(wrapper=True)
    def ledgerflow_run_step(self, step: StepInfo, params: Any) -> Generator[None, JSON, JSON]:
        target = self.target
        if target is None:
            return (yield)
        number = target._count_call()
        fault = target._armed
        if isinstance(fault, Crash) and fault.point == "before_effect" and fault.call == number:
            target._fired(fault, step)
            target._note_call(step, params, "crashed", error=str(fault))
            raise SimulatedCrash(f"{fault} ({step.action}, step {step.step_id})")
        try:
            result = yield
        except Exception as exc:
            target._note_call(step, params, "raised", error=f"{type(exc).__name__}: {exc}")
            raise
        if isinstance(fault, Crash) and fault.point == "after_effect" and fault.call == number:
            target._fired(fault, step)
            target._note_call(step, params, "crashed", result=result, error=str(fault))
            raise SimulatedCrash(f"{fault} ({step.action}, step {step.step_id})")
        target._note_call(step, params, "returned", result=result)
        if isinstance(fault, LeaseExpires) and fault.call == number:
            target._expire_after = step.key
        return result

    @hookimpl
    def ledgerflow_step_succeeded(self, step: StepInfo) -> None:
        if self.target is not None:
            self.target._recorded(step)

    @hookimpl
    def ledgerflow_step_compensated(self, step: StepInfo) -> None:
        if self.target is not None:
            self.target._recorded(step)


# --------------------------------------------------------------------------------------------
# In-memory stores
# --------------------------------------------------------------------------------------------

_template: sqlite3.Connection | None = None
_template_lock = threading.Lock()


def _memory_store(url: str, clock: Clock, snapshot_every: int) -> SQLStore:
    """An in-memory store with the schema in place, copied from a template migrated once per
    process (running the migrations for every throwaway store would dominate a property test)."""
    global _template
    store = SQLStore(url, clock=clock, snapshot_every=snapshot_every)
    with _template_lock:
        if _template is None:
            built = SQLStore("sqlite://")
            built.upgrade()
            template = sqlite3.connect(":memory:", check_same_thread=False)
            source = built.engine.raw_connection()
            try:
                source.driver_connection.backup(template)  # type: ignore[union-attr]
            finally:
                source.close()
            built.close()
            _template = template
        target = store.engine.raw_connection()
        try:
            _template.backup(target.driver_connection)  # type: ignore[arg-type]
        finally:
            target.close()
    return store


def _copy(store: SQLStore, *, into: sqlite3.Connection) -> None:
    source = store.engine.raw_connection()
    try:
        source.driver_connection.backup(into)  # type: ignore[union-attr]
    finally:
        source.close()


def _is_memory(url: str) -> bool:
    return url in _MEMORY_URLS or "mode=memory" in url


# --------------------------------------------------------------------------------------------
# The harness
# --------------------------------------------------------------------------------------------

DefinitionSource: TypeAlias = Definition | Workflow | str | Path


class Harness:
    """An engine on a throwaway store, for tests.

    ``definitions`` are registered (after ``setup``); ``actions`` (an
    :class:`~ledgerflow.registry.ActionRegistry`) are added to the engine's registry, beside
    the built-in and installed plugins' actions; ``setup(engine)``, if given, is called on
    every engine the harness builds (an app's ``setup``, which creates its tables and
    registers its workflows: it must be idempotent, as an app's is).

    ``url`` is the store: ``sqlite://`` (the default) is a fresh in-memory SQLite database,
    with the schema in place; any other URL is used as it is, through the store plugin of its
    scheme, its schema brought up to date (give each harness a database, file or PostgreSQL
    schema of its own). ``tenant`` is the
    tenant of everything the harness starts. ``clock`` gives the time to the store, the engine,
    the step runner and the breakers, and retry backoffs advance it instead of sleeping.

    Processing is inline by default: the harness takes each execution's lease, as a worker
    does, and calls :meth:`Engine.process <ledgerflow.engine.Engine.process>` in the calling
    thread. With ``worker=True`` a real :class:`~ledgerflow.worker.Worker` processes instead
    (``run_once``, in the calling thread; it needs a store that is not in memory). Steps run
    one at a time unless ``max_parallel`` says otherwise, so a run is reproducible (and an
    in-memory database, a single connection, is never used by two threads at once).

    ``plugins`` may be shared by several harnesses (it holds no engine state) as long as they
    are used one at a time; by default each harness has its own
    :class:`~ledgerflow.plugins.Plugins`, with every installed plugin.
    """

    def __init__(
        self,
        *definitions: DefinitionSource,
        url: str = "sqlite://",
        actions: ActionRegistry | None = None,
        setup: Callable[[Engine], object] | None = None,
        tenant: str = "tests",
        clock: Clock | None = None,
        worker: bool = False,
        plugins: Plugins | None = None,
        snapshot_every: int = 4,
        lease_ttl: float = 30.0,
        max_parallel: int = 1,
    ) -> None:
        self.url = url
        self.tenant = tenant
        self.clock = clock if clock is not None else Clock()
        self.use_worker = worker
        self.lease_ttl = lease_ttl
        self.max_parallel = max_parallel
        self.actions = actions
        self.setup = setup
        self.definitions: list[Definition] = [_compiled(d) for d in definitions]
        self.plugins = plugins if plugins is not None else Plugins()
        probe = self.plugins.manager.get_plugin(_PROBE)
        if probe is None:
            probe = _Probe()
            self.plugins.register(probe, _PROBE)
        assert isinstance(probe, _Probe)
        self._probe = probe
        self.calls: list[ActionCall] = []
        """Every action call made under this harness, in order (see :class:`ActionCall`)."""
        self.faults: list[tuple[StepFault, str]] = []
        """Every fault that struck, with the step it struck (``action``, ``step``)."""
        self.executions: list[str] = []
        """The executions :meth:`start` created, in order."""
        self.workers = 0
        self._armed: StepFault | None = None
        self._expire_after: str | None = None
        self._successor: tuple[str, Lease] | None = None
        self._taken_over = False
        self._calls_made = 0
        self._lock = threading.RLock()
        # the time of the clock when a processing last found nothing left to do, while nothing
        # but the appends of send(), to the executions in _appended, happened since (None
        # otherwise): what _process needs to know to skip its first look for work
        self._idle_at: float | None = None
        self._appended: set[str] = set()
        if _is_memory(url):
            self.store = _memory_store(url, self.clock, snapshot_every)
        else:
            # through the plugins, so that a store plugin's URL scheme works too
            self.store = self.plugins.store_for(
                url, clock=self.clock, snapshot_every=snapshot_every
            )
            self.store.upgrade()
        self.engine = self._build_engine()
        self._pristine: sqlite3.Connection | None = None
        if self.store.in_memory:
            self._pristine = sqlite3.connect(":memory:", check_same_thread=False)
            _copy(self.store, into=self._pristine)

    # ----------------------------------------------------------------------------------------
    # Life cycle
    # ----------------------------------------------------------------------------------------

    def _build_engine(self, *, register: bool = True) -> Engine:
        registry = ActionRegistry()
        runner = GraphRunner(
            self.store,
            registry,
            max_parallel=self.max_parallel,
            sleep=self.clock.sleep,
            clock=self.clock,
            plugins=self.plugins,
        )
        engine = Engine(
            self.store, registry=registry, runner=runner, clock=self.clock, plugins=self.plugins
        )
        if self.actions is not None:
            for name in self.actions:
                if name not in registry:
                    registry.register(self.actions.get(name))
        if self.setup is not None:
            self.setup(engine)
        if register:  # a restarted engine finds them in the store
            for definition in self.definitions:
                engine.register(definition)
        self.workers += 1
        return engine

    def restart(self) -> Engine:
        """Replace the engine by a fresh one over the same store, as a restarted worker process
        would have: no cached definitions, a new step runner, ``setup`` called again. Leases
        the old engine held stay until they are released or expire. Returns the new engine."""
        old = self.engine
        runner_close = getattr(old.runner, "close", None)
        if callable(runner_close):
            runner_close()
        self.engine = self._build_engine(register=False)
        return self.engine

    def reset(self) -> None:
        """Put an in-memory store back as it was when the harness was built (schema,
        ``setup``'s tables, definitions, nothing else) and forget every call, fault and
        execution; the engine stays. Cheaper than a new harness; only for ``sqlite://``."""
        if self._pristine is None:
            raise ValueError("only a harness on an in-memory store (sqlite://) can be reset")
        self.disarm()
        self._successor = None
        self._taken_over = False
        self._idle_at, self._appended = None, set()
        self.calls.clear()
        self.faults.clear()
        self.executions.clear()
        target = self.store.engine.raw_connection()
        try:
            self._pristine.backup(target.driver_connection)  # type: ignore[arg-type]
        finally:
            target.close()

    def close(self) -> None:
        """Release the engine's threads and the store's connections (an in-memory store is
        gone after this)."""
        self.engine.close()
        if self._pristine is not None:
            self._pristine.close()
            self._pristine = None

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Harness({self.store!r}, tenant={self.tenant!r}, {self.clock!r})"

    # ----------------------------------------------------------------------------------------
    # Driving executions
    # ----------------------------------------------------------------------------------------

    def register(self, definition: DefinitionSource) -> Definition:
        """Register another definition now, and on every engine a restart builds."""
        compiled = _compiled(definition)
        registered = self.engine.register(compiled)
        self.definitions.append(registered)
        return registered

    def start(
        self,
        workflow: str | None = None,
        *,
        version: int | Literal["latest"] = "latest",
        context: Mapping[str, JSON] | None = None,
        execution_id: str | None = None,
    ) -> str:
        """Start an execution for the harness's tenant; returns its id. ``workflow`` defaults to
        the first definition given to the harness."""
        if workflow is None:
            if not self.definitions:
                raise ValueError("name the workflow: the harness was given no definition")
            workflow = self.definitions[0].name
        self._idle_at = None  # an execution's start may arm timers
        execution_id = self.engine.create_execution(
            workflow, version, tenant=self.tenant, context=context, execution_id=execution_id
        )
        self.executions.append(execution_id)
        return execution_id

    def send(
        self,
        execution_id: str,
        event: str | Event,
        payload: Mapping[str, JSON] | None = None,
        *,
        role: str | None = None,
        key: str | None = None,
        process: bool = True,
    ) -> str:
        """Append ``event`` (a name with ``payload`` and ``role``, or an
        :class:`~ledgerflow.model.Event`) to the execution's ledger, as a client's
        ``enqueue_event`` does (``key`` is the client's retry key), then, unless ``process`` is
        false, process everything pending. Returns the event id.

        Raises what ``enqueue_event`` raises for bad input, and :class:`SimulatedCrash` when an
        armed fault strikes while processing.
        """
        if isinstance(event, Event):
            name, payload, role = event.name, event.payload, event.role
        else:
            name = event
        self._appended.add(execution_id)
        event_id = self.engine.enqueue_event(
            execution_id, name, tenant=self.tenant, role=role, payload=payload, key=key
        )
        if process:
            self.process()
        return event_id

    def process(self) -> int:
        """Fire the timers due by the harness's clock, then process every pending event of the
        store, in each execution's ledger order, until none is left that a worker could take;
        returns how many events were processed.

        Inline, each execution is taken under a lease of its own (``lease_ttl`` seconds of the
        harness's clock) and released afterwards; an execution whose lease another worker
        holds (one that crashed and whose lease has not expired) is left for later. Raises
        :class:`SimulatedCrash` when an armed fault strikes: the worker is then "dead", its
        lease left to expire (see :meth:`recover`).
        """
        return self._process()[0]

    def _process(
        self, known: Sequence[str] = (), *, look: str | None = None
    ) -> tuple[int, _Look | None]:
        """:meth:`process`, with two shortcuts for a caller that knows where the work is.

        ``known`` are executions of the harness's tenant the caller may have appended events
        to (with :meth:`send`). If the last processing found nothing left to do, the clock has
        not moved since, and nothing happened since but appends to these executions, those
        appended to hold the only work and no timer is due: they are processed at once,
        without the first look for work (which would have found just them). Otherwise it
        looks for work first, as :meth:`process` does.

        ``look``, an execution, is read (see :meth:`_look`) in the transaction of the last look
        for work, the one that found nothing left: nothing can change between the two. The
        look is ``None`` if the processing ended otherwise (leaving an execution a crashed
        worker holds, say).
        """
        idle = self._idle_at == self.clock() and self._appended <= set(known)
        with self._serving() as serving:
            if self.use_worker:
                worker = Worker(
                    self.engine,
                    lease_ttl=self.lease_ttl,
                    poll_interval=0.01,
                    sweep_interval=0.0,
                    name=f"harness-worker-{self.workers}",
                )
                return worker.run_once(), None
            processed = 0
            found = [(x, self.tenant) for x in known if x in self._appended] if idle else []
            for _ in range(1000):
                if not found:
                    poll = self._poll(serving, look)
                    if poll.due:
                        # as a worker does before looking for work; the events they append
                        # are pending now
                        self.engine.fire_due_timers()
                        found = self.store.pending_executions(64)
                    else:
                        found = poll.found
                    if not found:
                        return processed, None if poll.read is None else self._looked(poll.read)
                progress = False
                for execution_id, tenant in found:
                    done = self._process_one(execution_id, tenant)
                    if done is not None:
                        processed += done
                        progress = True
                if not progress:
                    return processed, None
                found = []
            raise RuntimeError("events are still pending after 1000 rounds of processing")

    def redeliver(self, execution_id: str) -> int:
        """Wake the execution up again, as a broker that delivers a wake-up twice does: a worker
        takes its lease and processes whatever is pending (nothing, if it was processed).
        Returns the number of events processed."""
        with self._serving():
            done = self._process_one(execution_id, self.tenant)
        return done or 0

    def advance(self, seconds: float) -> float:
        """Move the harness's clock forward by ``seconds``; returns the new time.

        Leases, circuit breakers, timestamps and timers follow the clock: a timer (a
        transition's ``after``) that is now due fires at the next :meth:`process` (or
        :meth:`send`), as a worker fires it at its next poll.
        """
        return self.clock.advance(seconds)

    # ----------------------------------------------------------------------------------------
    # Faults
    # ----------------------------------------------------------------------------------------

    def arm(self, fault: StepFault) -> None:
        """Inject ``fault`` into the next processing (see :class:`Crash` and
        :class:`LeaseExpires`); it strikes at most once, then is disarmed.

        Inline, the processing then raises :class:`SimulatedCrash` (call :meth:`recover`).
        With ``worker=True`` the real worker survives it as it survives a lost lease: it logs
        it and takes the execution again, so nothing is raised."""
        with self._lock:
            self._armed = fault
            self._calls_made = 0
            self._expire_after = None

    def disarm(self) -> StepFault | None:
        """Remove an armed fault that did not strike; returns it."""
        with self._lock:
            fault, self._armed = self._armed, None
            self._expire_after = None
            return fault

    def recover(self) -> int:
        """After a :class:`SimulatedCrash`: restart the worker (a fresh engine), let the dead
        worker's lease run out (or, after :class:`LeaseExpires`, let the worker that took the
        execution over carry on), and process everything pending. Returns the number of events
        processed."""
        self.disarm()
        self.restart()
        processed = 0
        if self._successor is not None:
            execution_id, lease = self._successor
            self._successor = None
            with self._serving():
                self.engine.fire_due_timers()
                processed += self._process_leased(execution_id, self.tenant, lease) or 0
        self.advance(self._past_lease())
        return processed + self.process()

    def _past_lease(self) -> float:
        """How long to wait for a lease to expire: a little longer than it lives."""
        return self.lease_ttl + min(self.lease_ttl, 1.0)

    # ----------------------------------------------------------------------------------------
    # What happened
    # ----------------------------------------------------------------------------------------

    def history(self, execution_id: str) -> list[HistoryEntry]:
        """The execution's ledger with each record's event id and status."""
        return self.engine.history(execution_id, tenant=self.tenant)

    def ledger(self, execution_id: str) -> list[Record]:
        """The execution's ledger: every record, in seq order."""
        return [entry.record for entry in self.history(execution_id)]

    def execution(self, execution_id: str) -> Execution:
        """The execution's projection, as the engine keeps it."""
        return self.engine.get_execution(execution_id, tenant=self.tenant)

    def state(self, execution_id: str) -> State:
        """The execution's state replayed from its whole ledger (what the projection must
        equal)."""
        return self.engine.replay(execution_id, tenant=self.tenant)

    def definition_of(self, execution_id: str) -> Definition:
        """The definition version the execution is pinned to."""
        found = self.execution(execution_id)
        return self.engine.definition(found.workflow, found.version)

    def results(self, execution_id: str) -> dict[str, JSON]:
        """The action results recorded for the execution, by idempotency key."""
        with self.store.read(tenant=self.tenant) as conn:
            return self._results_in(conn, execution_id)

    def _results_in(self, conn: sa.Connection, execution_id: str) -> dict[str, JSON]:
        rows = conn.execute(_RESULTS, {"execution_id": execution_id, "tenant": self.tenant})
        return {row.key: row.result for row in rows}

    def pending(self, execution_id: str) -> list[HistoryEntry]:
        """The execution's events not yet decided."""
        return [e for e in self.history(execution_id) if e.status == "pending"]

    def calls_of(self, execution_id: str) -> list[ActionCall]:
        """The action calls made for one execution."""
        return [c for c in self.calls if c.execution_id == execution_id]

    def render(self, execution_id: str) -> str:
        """The execution's ledger as lines for people (see :func:`render_ledger`)."""
        found = self.execution(execution_id)
        title = (
            f"{found.workflow} v{found.version}, execution {execution_id} (tenant "
            f"{found.tenant}): {found.state}, {found.status.value}"
        )
        return render_ledger(self.ledger(execution_id), title=title)

    def check(self, execution_id: str) -> None:
        """Assert what the engine guarantees of any execution, whatever happened to it:

        - the projection equals the state replayed from the ledger, and replaying from every
          snapshot gives that state too;
        - no action ran again once its result was recorded: among the calls whose result was
          recorded there is at most one per idempotency key;
        - the result recorded under each step's key is the one its ``step_succeeded`` (or
          ``step_compensated``) record carries.

        Raises :class:`AssertionError` saying which promise broke.
        """
        self._check(self._look(execution_id))

    def _versions(self, definition: Definition) -> Callable[[int], Definition]:
        """The registered versions of ``definition``'s workflow, by number: what folding a
        migrated ledger needs."""
        return lambda version: self.engine.definition(definition.name, version)

    def _look(self, execution_id: str) -> _Look:
        """Everything about one execution, each read once."""
        # one read transaction: one snapshot of the database for everything checked
        with self.store.read(tenant=self.tenant) as conn:
            read = self._read(conn, execution_id)
        return self._looked(read)

    def _read(self, conn: sa.Connection, execution_id: str) -> _Read:
        """What :meth:`_look` reads, in ``conn``'s transaction."""
        row = self.store.execution_row(conn, execution_id, self.tenant)
        if row is None:
            raise ExecutionNotFoundError(f"execution {execution_id} not found")
        return _Read(
            execution_id=execution_id,
            row=row,
            stored=self.store.records(conn, execution_id, self.tenant),
            snapshots=self.store.snapshot_states(execution_id, self.tenant, conn=conn),
            results=self._results_in(conn, execution_id),
        )

    def _looked(self, read: _Read) -> _Look:
        """The look made of what was read (outside the read's transaction: the engine may
        read the definition in a transaction of its own)."""
        execution_id, snapshots, results = read.execution_id, read.snapshots, read.results
        projection = Execution.from_row(read.row)
        history = [HistoryEntry.from_stored(s) for s in read.stored]
        definition = self.engine.definition(projection.workflow, projection.version)
        records = [entry.record for entry in history]
        return _Look(
            execution_id=execution_id,
            history=history,
            records=records,
            projection=projection,
            definition=definition,
            replayed=machine.fold(definition, records, versions=self._versions(definition)),
            snapshots=snapshots,
            results=results,
        )

    def _check(self, look: _Look) -> None:
        projection, replayed = look.projection, look.replayed
        shown = (projection.state, projection.status, dict(projection.context), projection.seq)
        folded = (replayed.name, replayed.status, dict(replayed.context), replayed.seq)
        assert shown == folded, (
            f"the projection {shown} is not the state replayed from the ledger {folded}"
        )
        for snapshot in look.snapshots:
            later = [r for r in look.records if r.seq > snapshot.seq]
            from_snapshot = machine.fold(
                look.definition, later, snapshot, versions=self._versions(look.definition)
            )
            assert from_snapshot == replayed, (
                f"replaying from the snapshot at seq {snapshot.seq} gives {from_snapshot}, "
                f"not {replayed}"
            )
        counted: dict[str, int] = {}
        for call in self.calls_of(look.execution_id):
            if call.recorded:
                counted[call.key] = counted.get(call.key, 0) + 1
        twice = sorted(key for key, n in counted.items() if n > 1)
        assert not twice, f"actions ran again after their result was recorded: {twice}"
        event_ids = {entry.seq: entry.event_id for entry in look.history}
        for record in look.records:
            if not isinstance(record, StepSucceeded | StepCompensated):
                continue
            key = f"{look.execution_id}:{event_ids[record.event_seq]}:{record.step_id}"
            if isinstance(record, StepCompensated):
                key += ":compensate"
            assert key in look.results, f"seq {record.seq}: no result is recorded under {key}"
            assert look.results[key] == record.result, (
                f"seq {record.seq}: the ledger says {record.step_id} returned "
                f"{record.result!r}, the result recorded under its key is "
                f"{look.results[key]!r}"
            )

    # ----------------------------------------------------------------------------------------
    # Internals
    # ----------------------------------------------------------------------------------------

    def _poll(self, serving: _Serving, look: str | None = None) -> _Poll:
        """What a worker's poll would find, in one read transaction: whether a timer is due
        by the clock and, if not, up to 64 ``(execution_id, tenant)`` holding an undecided
        event and no live lease (what :meth:`SQLStore.pending_executions
        <ledgerflow.store.sql.SQLStore.pending_executions>` finds). When it finds neither, the
        processing is over, and the same transaction reads the keys recorded for the
        executions of the calls made during it (for :meth:`_settle_calls`) and, if asked,
        ``look``."""
        now = self.clock()
        with self.store.read(tenant=ALL_TENANTS) as conn:
            if conn.execute(_DUE_TIMER, {"now": now}).first() is not None:
                return _Poll(due=True)
            found = [
                (r.execution_id, r.tenant)
                for r in conn.execute(_PENDING_EXECUTIONS, {"now": now, "limit": 64})
            ]
            if found:
                return _Poll(found=found)
            serving.recorded = self._recorded_keys_in(conn, serving.first)
            serving.calls_then = len(self.calls)
            read = None if look is None else self._read(conn, look)
        self._idle_at, self._appended = now, set()
        return _Poll(read=read)

    def _recorded_keys_in(self, conn: sa.Connection, first: int) -> set[str]:
        """The keys with a recorded result among the executions of the calls since
        ``first``."""
        executions = {c.execution_id for c in self.calls[first:]}
        if not executions:
            return set()
        rows = conn.execute(
            _RECORDED_KEYS, {"executions": sorted(executions), "tenant": self.tenant}
        )
        return {row.key for row in rows}

    @contextlib.contextmanager
    def _serving(self) -> Iterator[_Serving]:
        self._idle_at = None  # until a look for work finds nothing left
        previous = self._probe.target
        self._probe.target = self
        serving = _Serving(first=len(self.calls))
        try:
            yield serving
        finally:
            self._probe.target = previous
            self._settle_calls(serving)

    def _process_one(self, execution_id: str, tenant: str) -> int | None:
        """Process the execution as a worker handed its wake-up does: the lease taken as it is
        read, given up in the commit that finds nothing left; ``None`` if it is held."""
        return self._process_leased(execution_id, tenant, None)

    def _process_leased(self, execution_id: str, tenant: str, lease: Lease | None) -> int | None:
        try:
            if lease is None:
                done = self.engine.take_and_process(
                    execution_id,
                    tenant=tenant,
                    owner=f"harness-worker-{self.workers}",
                    ttl=self.lease_ttl,
                )
            else:
                done = self.engine.process(
                    execution_id, tenant=tenant, lease=lease, release_when_idle=True
                )
        except SimulatedCrash:
            raise
        except LeaseLostError as exc:
            if not self._taken_over:
                raise
            # the lease an armed LeaseExpires let expire was taken over: the stalled worker's
            # write was refused, as it should be
            self._taken_over = False
            raise SimulatedCrash(f"the worker's lease was taken over: {exc}") from exc
        return done

    def _count_call(self) -> int:
        with self._lock:
            self._calls_made += 1
            return self._calls_made

    def _fired(self, fault: StepFault, step: StepInfo) -> None:
        with self._lock:
            self._armed = None
            self.faults.append((fault, f"{step.action}, step {step.step_id}"))

    def _note_call(
        self,
        step: StepInfo,
        params: Any,
        outcome: CallOutcome,
        *,
        result: JSON = None,
        error: str | None = None,
    ) -> None:
        with self._lock:
            self.calls.append(
                ActionCall(
                    key=step.key,
                    action=step.action,
                    step_id=step.step_id,
                    execution_id=step.execution_id,
                    event_id=step.event_id,
                    compensation=step.compensation,
                    params=params,
                    outcome=outcome,
                    result=result,
                    error=error,
                    worker=self.workers,
                )
            )

    def _recorded(self, step: StepInfo) -> None:
        """A step's result is recorded: spring an armed :class:`LeaseExpires` that waits for
        it (the lease runs out, another worker takes it)."""
        with self._lock:
            fault = self._armed
            if not isinstance(fault, LeaseExpires) or self._expire_after != step.key:
                return
            self._armed = None
            self._expire_after = None
            self.faults.append((fault, f"{step.action}, step {step.step_id}"))
        self.clock.advance(self._past_lease())
        successor = f"harness-successor-{uuid.uuid4().hex[:6]}"
        token = self.store.take_lease(step.execution_id, successor, self.lease_ttl)
        self._taken_over = True
        if token is not None:
            self._successor = (
                step.execution_id,
                Lease(owner=successor, token=token, ttl=self.lease_ttl),
            )

    def _settle_calls(self, serving: _Serving) -> None:
        """Mark which of the calls since ``serving.first`` had their result recorded: a call
        that returned, whose key now has a result that no earlier call of the key accounts
        for. The recorded keys are read now, unless the processing read them as it ended."""
        first = serving.first
        with self._lock:
            fresh = self.calls[first:]
            if not fresh:
                return
            recorded = serving.recorded
            if recorded is None or len(self.calls) != serving.calls_then:
                with self.store.read(tenant=self.tenant) as conn:
                    recorded = self._recorded_keys_in(conn, first)
            accounted = {c.key for c in self.calls[:first] if c.recorded}
            settled: list[ActionCall] = []
            for call in fresh:
                mine = call.outcome == "returned" and call.key in recorded
                mine = mine and call.key not in accounted
                if mine:
                    accounted.add(call.key)
                settled.append(attrs.evolve(call, recorded=mine))
            self.calls[first:] = settled


@attrs.define
class _Serving:
    """One processing by the harness: the index of its first action call in
    :attr:`Harness.calls`, and, once the processing found nothing left to do, the keys then
    recorded for the executions it called actions of (``None`` until then)."""

    first: int
    recorded: set[str] | None = None
    calls_then: int = 0


@attrs.frozen(kw_only=True)
class _Poll:
    """What :meth:`Harness._poll` found: a timer ``due``, else the executions ``found`` with
    work, else nothing (and what it ``read`` of the execution it was asked to look at)."""

    due: bool = False
    found: list[tuple[str, str]] = attrs.Factory(list)
    read: _Read | None = None


@attrs.frozen(kw_only=True)
class _Read:
    """The rows a look at one execution is made of, read in one transaction."""

    execution_id: str
    row: Any
    stored: list[StoredRecord]
    snapshots: list[State]
    results: dict[str, JSON]


@attrs.frozen(kw_only=True)
class _Look:
    execution_id: str
    history: list[HistoryEntry]
    records: list[Record]
    projection: Execution
    definition: Definition
    replayed: State
    snapshots: list[State]
    results: dict[str, JSON]

    @property
    def pending(self) -> list[HistoryEntry]:
        return [entry for entry in self.history if entry.status == "pending"]


def _compiled(source: DefinitionSource) -> Definition:
    if isinstance(source, Definition):
        return source
    if isinstance(source, Workflow):
        return definitions_module.compile_workflow(source)
    return definitions_module.load(source)


# --------------------------------------------------------------------------------------------
# Ledgers for people
# --------------------------------------------------------------------------------------------


def _json(value: JSON, limit: int = 0) -> str:
    text = json.dumps(value, sort_keys=True, default=repr, ensure_ascii=False)
    if limit and len(text) > limit:
        return text[: limit - 1] + "…"
    return text


def render_ledger(records: Iterable[Record], *, title: str | None = None) -> str:
    """A ledger as one line per record, for people: what each event was (name, role,
    payload), what was decided (the transition and the context it set, or the rejection and
    why) and how each step ended. This is the form failing property tests report."""
    lines = [title] if title else []
    context: Mapping[str, JSON] = {}
    for record in records:
        lines.append(f"{record.seq:>4}  {_describe(record, context)}")
        if isinstance(record, ExecutionStarted | TransitionApplied | TransitionReverted):
            context = record.context
        elif isinstance(record, ContextUpdated):
            context = {**context, **record.values}
    return "\n".join(lines)


def _changes(before: Mapping[str, JSON], after: Mapping[str, JSON]) -> str:
    changed = {k: v for k, v in after.items() if k not in before or before[k] != v}
    gone = [k for k in before if k not in after]
    parts = [f"{k}={_json(v)}" for k, v in sorted(changed.items())]
    parts += [f"-{k}" for k in sorted(gone)]
    return f"; context {', '.join(parts)}" if parts else ""


def _describe(record: Record, context: Mapping[str, JSON]) -> str:
    match record:
        case ExecutionStarted():
            return (
                f"started    {record.workflow} v{record.version}, context {_json(record.context)}"
            )
        case EventReceived():
            by = f" by {record.role}" if record.role is not None else ""
            origin = f" ({record.origin})" if record.origin != "client" else ""
            return f"event      {record.name}{by}{origin} {_json(record.payload)}"
        case TransitionApplied():
            return (
                f"applied    {record.transition}: {record.source} -> {record.target}"
                f"{_changes(context, record.context)}"
            )
        case EventRejected():
            return f"rejected   event {record.event_seq}: {record.reason.value}: {record.detail}"
        case StepSucceeded():
            tries = f" after {record.attempts} attempts" if record.attempts > 1 else ""
            return f"step ok    {record.step_id}{tries} -> {_json(record.result, 160)}"
        case StepFailed():
            return f"step FAIL  {record.step_id} ({record.attempts} attempts): {record.error}"
        case StepCompensated():
            return f"undone     {record.step_id} -> {_json(record.result, 160)}"
        case ExecutionFailed():
            during = " while compensating" if record.compensating else ""
            return f"FAILED     event {record.event_seq}{during}: {record.reason}"
        case TransitionReverted():
            return (
                f"reverted   {record.transition}: back to {record.target}"
                f"{_changes(context, record.context)}"
            )
        case ExecutionResumed():
            return f"resumed    event {record.retried_seq}"
        case ContextUpdated():
            return f"context    {record.step_id}: {_json(record.values)}"
        case ExecutionMigrated():
            by = f" by {record.requested_by}" if record.requested_by else ""
            moved = f"v{record.from_version} -> v{record.to_version}"
            return f"migrated   {moved} in {record.state}{by}"
