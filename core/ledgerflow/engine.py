"""The engine: register definitions, create executions, append events, read the ledger, and
process an execution's pending events under its lease.

Every call is scoped by tenant. Invalid input raises a :class:`~ledgerflow.errors.LedgerflowError`
subclass and leaves the store untouched. ``enqueue_event`` returns only once the event and its
outbox record are committed together, so an acknowledged event is never lost.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
import sqlalchemy as sa

from ledgerflow import definitions as definitions_module
from ledgerflow import logs, machine
from ledgerflow.builtin.actions import SET_CONTEXT
from ledgerflow.definitions import CompiledStep, Definition
from ledgerflow.errors import (
    DefinitionConflictError,
    DefinitionError,
    EventNotFoundError,
    ExecutionNotFoundError,
    ExpressionError,
    InvalidEventError,
    InvalidInputError,
    LedgerflowError,
    StoreUnavailableError,
    WorkflowNotFoundError,
    first_line,
)
from ledgerflow.executor import GraphRunner, RunResult, StepJob, StepRunner
from ledgerflow.json_values import holds_nul, unstorable
from ledgerflow.model import (
    JSON,
    Accepted,
    ContextUpdated,
    EventReceived,
    EventRejected,
    ExecutionFailed,
    ExecutionResumed,
    Record,
    RejectReason,
    State,
    Status,
    StepCompensated,
    StepFailed,
    StepSucceeded,
    TransitionApplied,
    TransitionReverted,
    Workflow,
)
from ledgerflow.notifiers import Notifier
from ledgerflow.plugins import Plugins, Source
from ledgerflow.registry import ActionRegistry
from ledgerflow.store.sql import (
    ALL_TENANTS,
    SQLStore,
    StoredRecord,
    normalise_url,
    tenant_scope,
)
from ledgerflow.transports import Transport, Wakeup
from ledgerflow.versioning import MigrationReport, Target
from ledgerflow.versioning import migrate as migrate_executions

__all__ = [
    "DEFAULT_DB",
    "RETRY_EVENT",
    "Engine",
    "EventInfo",
    "Execution",
    "HistoryEntry",
    "Lease",
    "Timer",
]

DEFAULT_DB = "sqlite:///ledgerflow.db"
"""The store used when none is given: an SQLite file in the working directory."""

RETRY_EVENT = "ledgerflow.retry"
"""The name of the system event :meth:`Engine.retry` appends to resume a failed execution."""

log = logging.getLogger("ledgerflow.engine")

_COMMIT_ATTEMPTS = 20


@attrs.frozen(kw_only=True)
class Execution:
    """An execution as its projection shows it."""

    id: str
    tenant: str
    workflow: str
    version: int
    state: str
    context: Mapping[str, JSON]
    status: Status
    seq: int
    decided_seq: int
    created_at: float
    updated_at: float

    @classmethod
    def from_row(cls, row: Any) -> Execution:
        """The execution stored in ``row`` of ``lf_executions``."""
        return cls(
            id=row.id,
            tenant=row.tenant,
            workflow=row.workflow,
            version=row.version,
            state=row.state,
            context=row.context,
            status=Status(row.status),
            seq=row.projection_seq,
            decided_seq=row.decided_seq,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


@attrs.frozen(kw_only=True)
class HistoryEntry:
    """One record of an execution's ledger, with its event id and, for events, how they were
    processed."""

    seq: int
    kind: str
    event_id: str
    record: Record
    status: str | None
    outcome: str | None
    detail: str | None
    created_at: float
    processed_at: float | None

    @classmethod
    def from_stored(cls, stored: StoredRecord) -> HistoryEntry:
        """The entry of a record as the store read it."""
        return cls(
            seq=stored.record.seq,
            kind=stored.record.kind,
            event_id=stored.event_id,
            record=stored.record,
            status=stored.status,
            outcome=stored.outcome,
            detail=stored.detail,
            created_at=stored.created_at,
            processed_at=stored.processed_at,
        )


@attrs.frozen(kw_only=True)
class EventInfo:
    """Where an appended event stands: ``pending``, ``processed``, ``rejected`` or ``failed``,
    with the rejection reason or failure and its detail."""

    event_id: str
    execution_id: str
    seq: int
    name: str
    status: str
    outcome: str | None
    detail: str | None


@attrs.frozen(kw_only=True)
class Lease:
    """A worker's hold on one execution: checked (and renewed) at every commit."""

    owner: str
    token: int
    ttl: float


class _LeaseHeld(Exception):
    """Raised inside the transaction that was to take a lease someone holds: it rolls back."""


@attrs.frozen(kw_only=True)
class Timer:
    """A timer of an execution: it fires ``event`` at ``due_at``. ``kind`` is ``state`` for a
    timer armed on entering a state (``after`` or ``at``; cancelled if the execution leaves
    the state first) or ``step`` for an event a step scheduled (``ledgerflow.schedule_event``;
    cancelled only if the execution completes first, and fired with ``payload``). ``state``
    is ``armed``, ``fired`` (with the id of the event it appended) or ``cancelled``."""

    id: str
    execution_id: str
    tenant: str
    event: str
    due_at: float
    armed_seq: int
    state: str
    created_at: float
    fired_at: float | None
    cancelled_at: float | None
    fired_event_id: str | None
    kind: str = "state"
    payload: Mapping[str, JSON] | None = None

    @classmethod
    def from_row(cls, row: Any) -> Timer:
        """The timer stored in ``row`` of ``lf_timers``."""
        return cls(
            id=row.id,
            execution_id=row.execution_id,
            tenant=row.tenant,
            event=row.event,
            due_at=row.due_at,
            armed_seq=row.armed_seq,
            state=row.state,
            created_at=row.created_at,
            fired_at=row.fired_at,
            cancelled_at=row.cancelled_at,
            fired_event_id=row.fired_event_id,
            kind=row.kind,
            payload=row.payload,
        )


@attrs.frozen(kw_only=True)
class _FirstEvent:
    """The event :meth:`Engine.start` appends with a new execution, as the client gave it."""

    name: str
    payload: dict[str, JSON]
    role: str | None
    key: str | None


@functools.lru_cache(maxsize=256)
def _compiled(name: str, version: int, body: str) -> Definition:
    """The stored definition ``body`` (JSON text), parsed and compiled: once per process for
    each content, whichever engine reads it (a worker restarting, a test's new engine)."""
    source = f"{name} v{version}"
    return definitions_module.compile_workflow(
        definitions_module.parse(json.loads(body), source=source), source=source
    )


def _client_event(
    tenant: str, payload: Mapping[str, JSON] | None, role: str | None, key: str | None
) -> dict[str, JSON]:
    """Check what a client gives with an event (see :meth:`Engine.enqueue_event`); returns the
    payload as a new dict."""
    _require_tenant(tenant)
    if payload is not None and not isinstance(payload, Mapping):
        raise InvalidInputError("the payload must be a JSON object")
    checked = dict(payload or {})
    if role is not None and not isinstance(role, str):
        raise InvalidInputError("role must be a string")
    if role is not None:
        _require_name(role, "role")
    if key is not None:
        if not isinstance(key, str) or not key:
            raise InvalidInputError("key must be a non-empty string")
        _require_name(key, "key")
        if key.startswith("ledgerflow."):
            raise InvalidInputError("keys starting with 'ledgerflow.' are ledgerflow's own")
    _require_json(checked, "payload")
    return checked


def _digest(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class Engine:
    """The ledgerflow engine over one store.

    ``store`` is a :class:`SQLStore` or a database URL (default :data:`DEFAULT_DB`), built by
    the store plugin registered for its scheme. ``registry`` holds the actions steps may call;
    every plugin's actions (the built-in ones included) are added to it. ``plugins`` are the
    plugins to use (default: ledgerflow's own and every installed one, see
    :class:`~ledgerflow.plugins.Plugins`). ``runner`` runs an applied transition's steps (by
    default as a dependency graph, independent steps in parallel). ``clock`` gives the time for
    every timestamp the engine writes. ``action_db`` (default: ``LEDGERFLOW_ACTION_DB``, for a
    PostgreSQL URL), for a ``store`` given as a URL, is the same database reached as a confined
    role: the transactions database actions run in log in as it (see
    :func:`~ledgerflow.store.confine_role`).
    """

    def __init__(
        self,
        store: SQLStore | str = DEFAULT_DB,
        *,
        registry: ActionRegistry | None = None,
        runner: StepRunner | None = None,
        clock: Callable[[], float] = time.time,
        snapshot_every: int = 100,
        plugins: Plugins | None = None,
        broker: str | None = None,
        action_db: str | None = None,
    ) -> None:
        self.plugins = plugins if plugins is not None else Plugins()
        self.broker = broker or os.environ.get("LEDGERFLOW_BROKER") or "database"
        self._transport: Transport | None = None
        if isinstance(store, SQLStore):
            if action_db:
                raise InvalidInputError(
                    "action_db goes with a database URL; give the store its action_url instead"
                )
            self.store = store
        else:
            options: dict[str, Any] = {"clock": clock, "snapshot_every": snapshot_every}
            if not action_db and normalise_url(store).startswith("postgresql"):
                # the environment's role applies to PostgreSQL stores only
                action_db = os.environ.get("LEDGERFLOW_ACTION_DB")
            if action_db:
                options["action_url"] = action_db
            self.store = self.plugins.store_for(store, **options)
        self.registry = registry if registry is not None else ActionRegistry()
        self.clock = clock
        self._definitions: dict[tuple[str, int], Definition] = {}
        # the latest version of each workflow as last read: a start checks it in the statement
        # that creates the execution, and reads it again only when another was registered
        self._latest: dict[str, int] = {}
        self._lock = threading.Lock()
        self.runner: StepRunner = runner or GraphRunner(
            self.store, self.registry, clock=clock, plugins=self.plugins
        )
        # every attribute is set before any plugin sees the engine
        self.notifiers: dict[str, Notifier] = self.plugins.notifiers()
        self.plugins.register_expression_functions()
        self.plugins.register_actions(self.registry, self)

    @property
    def transport(self) -> Transport:
        """The transport of ``broker`` (built on first use): what publishes the wake-ups of
        the events this engine appends."""
        with self._lock:
            if self._transport is None:
                self._transport = self.plugins.transport_for(self.broker, self)
            return self._transport

    def _publish(self, wakeups: list[Wakeup]) -> None:
        """The fast path: send the wake-ups of committed events now. A failure is logged, not
        raised: the events are committed, and the outbox relay sends their wake-ups later."""
        try:
            self.transport.publish(wakeups)
        except Exception as exc:
            log.warning("wake-ups not published (the outbox relay will): %s", first_line(exc))

    def add_plugin(
        self, plugin: object, name: str | None = None, *, source: Source = "code"
    ) -> str:
        """Register ``plugin`` (see :meth:`Plugins.register`) and let it register its
        notifiers and actions in this engine now; returns its name."""
        name = self.plugins.register(plugin, name, source=source)
        if self.plugins.manager.has_plugin(name):
            for notifier, value in self.plugins.notifiers(only=name).items():
                if notifier in self.notifiers:
                    self.plugins.report(
                        name, f"notifiers {notifier!r} is already registered; left out"
                    )
                    continue
                self.notifiers[notifier] = value
            self.plugins.register_expression_functions(only=name)
            self.plugins.register_actions(self.registry, self, only=name)
        return name

    def close(self) -> None:
        """Release the store's connections, the transport's and the step runner's threads."""
        close_runner = getattr(self.runner, "close", None)
        if callable(close_runner):
            close_runner()
        if self._transport is not None:
            self._transport.close()
        self.store.close()

    # ----------------------------------------------------------------------------------------
    # Definitions
    # ----------------------------------------------------------------------------------------

    def register(self, source: Definition | Workflow | str | Path) -> Definition:
        """Store a definition (a compiled one, a workflow, or a file path) under its name and
        version, and return it compiled.

        Registering the same definition again changes nothing. A different definition under a
        name and version already registered raises :class:`DefinitionConflictError`: versions
        are immutable, so executions pinned to one never see it change.
        """
        if isinstance(source, Definition):
            definition = source
        elif isinstance(source, Workflow):
            definition = definitions_module.compile_workflow(source)
        else:
            definition = definitions_module.load(source)
        problems = definitions_module.validate(
            definition.workflow, source=definition.source, actions=self.registry
        )
        if problems:
            raise DefinitionError(problems)
        workflow = definition.workflow
        names = [
            ("workflow name", workflow.name),
            *(("state", state) for state in workflow.states),
            *(("event", t.on) for t in workflow.transitions),
        ]
        for what, value in names:
            if len(value) > _MAX_NAME:
                raise InvalidInputError(
                    f"{what} {value[:40]!r}... is longer than {_MAX_NAME} characters, "
                    "more than the store keeps"
                )
        body = definitions_module.to_data(definition)
        if holds_nul(body):
            raise InvalidInputError(
                f"{definition.name} v{definition.version}: the definition holds a NUL character "
                "(\\u0000), which no store can keep"
            )
        _require_unicode(
            json.dumps(body, ensure_ascii=False),
            f"{definition.name} v{definition.version}: definition",
        )
        digest = _digest(body)
        try:
            with self.store.write() as conn:
                existing = self.store.definition_hash(conn, definition.name, definition.version)
                if existing is None:
                    self.store.insert_definition(
                        conn, definition.name, definition.version, body, digest
                    )
        except sa.exc.IntegrityError:
            with self.store.read() as conn:
                existing = self.store.definition_hash(conn, definition.name, definition.version)
        if existing is not None and existing != digest:
            raise DefinitionConflictError(
                f"{definition.name} v{definition.version} is already registered with different "
                "content; register the change as a new version"
            )
        with self._lock:
            self._definitions[(definition.name, definition.version)] = definition
            known = self._latest.get(definition.name)
            if known is not None and known < definition.version:
                self._latest[definition.name] = definition.version
        return definition

    def definition(self, name: str, version: int | Literal["latest"] = "latest") -> Definition:
        """The registered definition ``name`` at ``version`` (``"latest"``: the highest).

        Raises :class:`WorkflowNotFoundError` if there is none.
        """
        return self._resolve(name, version)

    def _resolve(
        self, name: str, version: int | Literal["latest"], conn: sa.Connection | None = None
    ) -> Definition:
        """:meth:`definition`, read in ``conn``'s transaction when one is given (a caller
        about to write saves a transaction of its own)."""
        if version == "latest":
            latest = self.store.latest_version(name, conn)
            if latest is None:
                with self._lock:
                    self._latest.pop(name, None)
                raise WorkflowNotFoundError(f"no workflow named {name!r} is registered")
            with self._lock:
                self._latest[name] = latest
            version = latest
        return self._definition(name, version, conn)

    def _definition(self, name: str, version: int, conn: sa.Connection | None = None) -> Definition:
        """The definition ``name`` ``version``, compiled once; read in ``conn``'s transaction
        when it is not compiled yet and a transaction is open."""
        with self._lock:
            cached = self._definitions.get((name, version))
        if cached is not None:
            return cached
        body = self.store.definition_body(name, version, conn=conn)
        if body is None:
            raise WorkflowNotFoundError(f"workflow {name!r} has no version {version}")
        definition = _compiled(name, version, json.dumps(body))
        with self._lock:
            self._definitions[(name, version)] = definition
        return definition

    def list_definitions(self) -> list[dict[str, Any]]:
        """Every registered definition: name, version, hash and registration time."""
        return [
            {"name": n, "version": v, "hash": h, "registered_at": t}
            for n, v, h, t in self.store.list_definitions()
        ]

    # ----------------------------------------------------------------------------------------
    # Executions and events
    # ----------------------------------------------------------------------------------------

    def create_execution(
        self,
        workflow: str,
        version: int | Literal["latest"] = "latest",
        *,
        tenant: str,
        context: Mapping[str, JSON] | None = None,
        execution_id: str | None = None,
    ) -> str:
        """Start an execution of ``workflow``, pinned to ``version`` (``"latest"`` resolves now,
        once), for ``tenant``, with an initial ``context``; returns its id."""
        _require_tenant(tenant)
        new_id, _ = self._create(workflow, version, tenant, context, execution_id, None)
        return new_id

    def start(
        self,
        workflow: str,
        event: str,
        *,
        tenant: str,
        payload: Mapping[str, JSON] | None = None,
        role: str | None = None,
        context: Mapping[str, JSON] | None = None,
        version: int | Literal["latest"] = "latest",
        execution_id: str | None = None,
        key: str | None = None,
    ) -> tuple[str, str]:
        """Start an execution of ``workflow`` and append its first ``event`` in one
        transaction; returns ``(execution_id, event_id)``. The same as :meth:`create_execution`
        then :meth:`enqueue_event`, in half the round trips: both are committed, or neither.

        Everything is checked before anything is written (the tenant, the context, the event
        against the pinned version and its payload schema, the role and key). With
        ``execution_id`` and ``key`` both given, a retry of the same call returns the first
        call's ids and writes nothing; an ``execution_id`` already used otherwise is refused
        with :class:`InvalidInputError`.
        """
        payload = _client_event(tenant, payload, role, key)
        first = _FirstEvent(name=event, payload=payload, role=role, key=key)
        new_id, event_id = self._create(workflow, version, tenant, context, execution_id, first)
        assert event_id is not None
        return new_id, event_id

    def _create(
        self,
        workflow: str,
        version: int | Literal["latest"],
        tenant: str,
        context: Mapping[str, JSON] | None,
        execution_id: str | None,
        first: _FirstEvent | None,
    ) -> tuple[str, str | None]:
        """Insert a new execution, with ``first`` appended to it in the same transaction if
        given; tell the plugins and publish after the commit. Returns the ids."""
        if context is not None and not isinstance(context, Mapping):
            raise InvalidInputError("the context must be a JSON object")
        new_id = execution_id or uuid.uuid4().hex
        _require_name(new_id, "execution id", 64)
        event: EventReceived | None = None
        event_id: str | None = None
        with self._lock:
            # "latest" as last read: the creating statement checks that it still is
            guess = self._latest.get(workflow) if version == "latest" else None
        try:
            with self.store.write(tenant=tenant) as conn:
                while True:
                    # resolved and checked in the writing transaction, before its first write:
                    # one transaction for the whole call, and what is raised leaves nothing
                    # written
                    try:
                        if guess is not None:
                            definition = self._definition(workflow, guess, conn)
                        else:
                            definition = self._resolve(workflow, version, conn)
                        if first is not None:
                            self.check_event(definition, first.name, first.payload)
                        started = machine.start(definition, context=dict(context or {}))
                        _require_json(started.context, "context")
                    except LedgerflowError:
                        if guess is None:
                            raise
                        guess = None  # judged by the latest version as read now, not as last read
                        continue
                    state = machine.fold(definition, [started])
                    if first is not None:
                        event = EventReceived(
                            seq=started.seq + 1,
                            name=first.name,
                            payload=first.payload,
                            role=first.role,
                        )
                    # the execution and its first event (if any) in one write (one statement
                    # on PostgreSQL)
                    event_ids = self.store.insert_execution(
                        conn,
                        new_id,
                        tenant,
                        state,
                        started,
                        then=[event] if event is not None else [],
                        client_key=first.key if first is not None else None,
                        published=self.broker != "database",  # _enqueued publishes it below
                        only_if_latest=guess is not None,
                    )
                    if event_ids is not None:
                        break
                    guess = None  # another version was registered since: read it, then redo
                event_id = event_ids[0] if event_ids else None
                _arm_timers(self.store, conn, definition, new_id, tenant, started.seq, state)
        except sa.exc.IntegrityError as exc:
            if first is not None and first.key is not None and execution_id is not None:
                with self.store.read(tenant=tenant) as conn:
                    found = self.store.execution_row(conn, new_id, tenant) is not None
                    existing = self.store.event_by_key(conn, new_id, first.key) if found else None
                if existing is not None:
                    return new_id, existing  # a retry of a start that committed
            raise InvalidInputError(
                f"execution id {new_id!r} cannot be used; choose another"
            ) from exc
        self.plugins.notify(
            "ledgerflow_execution_created",
            execution_id=new_id,
            tenant=tenant,
            workflow=definition.name,
            version=definition.version,
        )
        if event is not None and event_id is not None:
            self._enqueued(new_id, tenant, event_id, event)
        return new_id, event_id

    def enqueue_event(
        self,
        execution_id: str,
        event: str,
        *,
        tenant: str,
        role: str | None = None,
        payload: Mapping[str, JSON] | None = None,
        key: str | None = None,
    ) -> str:
        """Append ``event`` to the execution's ledger for processing; returns its event id.

        Returns once the event and its outbox record are committed in one transaction. A
        repeated ``key`` (a client's retry) returns the first event's id and appends nothing.
        Raises :class:`ExecutionNotFoundError` for an unknown execution (or another tenant's),
        and :class:`InvalidEventError` for an event the pinned workflow version does not know or
        a payload that breaks its schema; nothing is written then.
        """
        payload = _client_event(tenant, payload, role, key)

        def check(conn: sa.Connection) -> None:
            # in the appending transaction, under the execution's lock: one round of reads
            row = self.store.lock_execution_row(conn, execution_id, tenant)
            if row is None:
                raise ExecutionNotFoundError(f"execution {execution_id} not found")
            self.check_event(self._definition(row.workflow, row.version, conn), event, payload)

        return self._append_event(
            execution_id,
            tenant,
            lambda seq: EventReceived(seq=seq, name=event, payload=payload, role=role),
            key,
            check=check,
        )

    def _append_event(
        self,
        execution_id: str,
        tenant: str,
        make: Callable[[int], EventReceived],
        key: str | None,
        *,
        check: Callable[[sa.Connection], None] | None = None,
    ) -> str:
        """Append the event ``make(seq)`` after the ledger's last record, with its outbox row,
        retrying when a concurrent append took the seq; a known ``key`` returns its event.
        ``check``, given, runs first in the same transaction and locks the execution; what it
        raises is raised, with nothing written."""
        last_conflict: Exception | None = None
        for attempt in range(_COMMIT_ATTEMPTS):
            try:
                with self.store.write(tenant=tenant) as conn:
                    if check is not None:
                        check(conn)
                    event_id, event = self._append_in(
                        conn, execution_id, tenant, make, key, locked=check is not None
                    )
                if event is not None:
                    self._enqueued(execution_id, tenant, event_id, event)
                return event_id
            except sa.exc.IntegrityError as exc:
                # another append took this seq (or this client key) first: look again
                last_conflict = exc
                time.sleep(min(0.001 * 2**attempt, 0.05))
            except sa.exc.DBAPIError as exc:
                # a deadlock or serialization failure is worth one more try; a database that
                # stayed locked through the busy timeout, or is down, is not
                if attempt + 1 == _COMMIT_ATTEMPTS or not _retryable(exc):
                    raise StoreUnavailableError(f"event not appended: {first_line(exc)}") from exc
        raise StoreUnavailableError(
            f"event not appended to {execution_id}: {_COMMIT_ATTEMPTS} concurrent appends won "
            f"(last conflict: {first_line(last_conflict) if last_conflict else 'none'})"
        )

    def _append_in(
        self,
        conn: sa.Connection,
        execution_id: str,
        tenant: str,
        make: Callable[[int], EventReceived],
        key: str | None,
        *,
        locked: bool = False,
    ) -> tuple[str, EventReceived | None]:
        """Inside a write transaction: append the event ``make(seq)`` with its outbox row;
        returns its id and the event, or, for a known ``key``, the first event's id and
        ``None``. ``locked``: the caller holds the execution's lock already."""
        if key is not None:
            existing = self.store.event_by_key(conn, execution_id, key)
            if existing is not None:
                return existing, None
        if not locked:
            self.store.lock_execution(conn, execution_id)
        seq = self.store.last_seq(conn, execution_id) + 1
        event = make(seq)
        (event_id,) = self.store.insert_records(
            conn,
            execution_id,
            tenant,
            [event],
            client_key=key,
            published=self.broker != "database",  # _enqueued publishes it after the commit
        )
        return event_id, event

    def _enqueued(
        self, execution_id: str, tenant: str, event_id: str, event: EventReceived
    ) -> None:
        """After an append committed: publish its wake-up and tell the plugins."""
        self._publish([Wakeup(execution_id=execution_id, tenant=tenant, event_id=event_id)])
        self.plugins.notify(
            "ledgerflow_event_enqueued",
            execution_id=execution_id,
            tenant=tenant,
            event_id=event_id,
            event=event.name,
        )

    # ----------------------------------------------------------------------------------------
    # Timers
    # ----------------------------------------------------------------------------------------

    def fire_due_timers(self, *, limit: int = 100) -> int:
        """Fire up to ``limit`` timers due by the clock: append each one's event (origin
        ``timer``, no payload) to its execution's ledger and mark the timer fired, in one
        transaction per timer; returns how many fired.

        The event's client key is derived from the timer's id, and a timer is claimed only
        while it is armed (on PostgreSQL with ``SKIP LOCKED``), so however many workers call
        this at once, and whatever crashes in between, each timer appends its event at most
        once; a timer that is due stays armed until some call fires it. Workers call this
        every poll interval.
        """
        now = self.store.clock()
        fired = 0
        for timer_id, execution_id, tenant in self.store.due_timers(now, limit):
            for attempt in range(_COMMIT_ATTEMPTS):
                try:
                    with self.store.write(tenant=tenant) as conn:
                        row = self.store.claim_timer(conn, timer_id, now)
                        if row is None:
                            break  # fired, cancelled, or being fired by another worker
                        event_id, event = self._append_in(
                            conn,
                            execution_id,
                            tenant,
                            _timer_event(row.event, row.payload),
                            f"ledgerflow.timer:{timer_id}",
                        )
                        self.store.mark_timer_fired(conn, timer_id, event_id)
                except sa.exc.IntegrityError:
                    time.sleep(min(0.001 * 2**attempt, 0.05))
                    continue
                except sa.exc.DBAPIError as exc:
                    if attempt + 1 == _COMMIT_ATTEMPTS or not _retryable(exc):
                        raise StoreUnavailableError(
                            f"timer {timer_id} not fired: {first_line(exc)}"
                        ) from exc
                    continue
                if event is not None:
                    fired += 1
                    self._enqueued(execution_id, tenant, event_id, event)
                break
        return fired

    def timers(self, execution_id: str, *, tenant: str) -> list[Timer]:
        """Every timer the execution armed, in the order armed: armed, fired or cancelled.
        Raises :class:`ExecutionNotFoundError` if it does not exist for ``tenant``."""
        _require_tenant(tenant)
        with self.store.read(tenant=tenant) as conn:
            if self.store.execution_row(conn, execution_id, tenant) is None:
                raise ExecutionNotFoundError(f"execution {execution_id} not found")
            rows = self.store.timer_rows(conn, execution_id, tenant)
        return [Timer.from_row(r) for r in rows]

    def retry(self, execution_id: str, *, tenant: str, requested_by: str | None = None) -> str:
        """Ask for the failed execution to be resumed from its point of failure; returns the id
        of the retry event a worker will process.

        The retry runs again every step of the failed event's transition that has no recorded
        success (recorded ones are not re-run: their stored results are used), or, when the
        failure came while compensating, every compensation not yet recorded. If that
        succeeds the execution is active again (completed, in a terminal state), or back in the
        state the transition left if it was compensated; if not, it is failed again and can be
        retried again. Asking twice before a worker gets to it appends one retry.

        Raises :class:`ExecutionNotFoundError` for an unknown execution (or another tenant's)
        and :class:`InvalidInputError` for one that is not failed.
        """
        _require_tenant(tenant)
        if requested_by is not None:
            if not isinstance(requested_by, str):
                raise InvalidInputError("requested_by must be a string")
            _require_name(requested_by, "requester")
        with self.store.read(tenant=tenant) as conn:
            row = self.store.execution_row(conn, execution_id, tenant)
            if row is None:
                raise ExecutionNotFoundError(f"execution {execution_id} not found")
            if row.status != Status.FAILED.value:
                raise InvalidInputError(
                    f"execution {execution_id} is {row.status}, not failed: nothing to retry"
                )
            failures = [
                s.record
                for s in self.store.records(conn, execution_id, tenant)
                if isinstance(s.record, ExecutionFailed)
            ]
        failed = failures[-1]
        payload: dict[str, JSON] = {"event_seq": failed.event_seq}
        if requested_by is not None:
            payload["requested_by"] = requested_by
        return self._append_event(
            execution_id,
            tenant,
            lambda seq: EventReceived(seq=seq, name=RETRY_EVENT, payload=payload, origin="system"),
            f"{RETRY_EVENT}:{len(failures)}",
        )

    def migrate(
        self,
        workflow: str,
        from_version: int,
        to_version: int,
        *,
        executions: Sequence[str] | Literal["all"],
        tenant: str | None = None,
        requested_by: str | None = None,
        dry_run: bool = False,
        progress: Callable[[Sequence[Target]], Iterable[Target]] | None = None,
    ) -> MigrationReport:
        """Move executions of ``workflow`` pinned to ``from_version`` to the newer
        ``to_version``, each in its state, and report what happened to each.

        ``executions`` names them (they need their ``tenant``), or is ``"all"``: every active
        or failed execution on ``from_version``, of ``tenant`` or, without one, of every
        tenant. Each is migrated under its lease, in one transaction: an
        :class:`~ledgerflow.model.ExecutionMigrated` record naming ``requested_by`` is
        appended to its ledger, its projection is pinned to ``to_version`` (with a snapshot),
        and, if the two versions time its state differently, its timers are re-armed as the
        new version times them, counted from when the state was entered. Later events are
        decided under the new version; replaying the ledger folds what came before the record
        under the old one and the rest under the new one.

        An execution is refused, with the reason in its outcome and nothing written, when it
        is not found for ``tenant``, is not on ``from_version``, is completed or failed, has
        events still to be processed, is held by a worker right now, or is in a state the new
        version lacks or makes terminal. With ``dry_run`` nothing is written at all: each
        outcome says what would happen and where the ledger, replayed under the new version,
        first goes differently (:func:`ledgerflow.versioning.replay_divergence`).
        ``progress`` wraps the walk over the chosen executions, to show how far it got (such
        as :func:`ledgerflow.progress.track`).

        Raises :class:`WorkflowNotFoundError` for an unregistered version and
        :class:`InvalidInputError` for a downgrade, a bad tenant or requester, or executions
        named without their tenant.
        """
        if tenant is not None:
            _require_tenant(tenant)
        if requested_by is not None:
            if not isinstance(requested_by, str):
                raise InvalidInputError("requested_by must be a string")
            _require_name(requested_by, "requester")
        return migrate_executions(
            self,
            workflow,
            from_version,
            to_version,
            executions=executions,
            tenant=tenant,
            requested_by=requested_by,
            dry_run=dry_run,
            progress=progress,
        )

    @staticmethod
    def check_event(definition: Definition, event: str, payload: Mapping[str, JSON]) -> None:
        """Raise :class:`InvalidEventError` unless ``definition`` knows ``event`` and
        ``payload`` satisfies its schema."""
        if not isinstance(event, str) or event not in definition.known_events:
            known = ", ".join(sorted(definition.known_events))
            raise InvalidEventError(
                f"{definition.name} v{definition.version} has no event {event!r} (known: {known})"
            )
        errors = definition.payload_errors(event, payload)
        if errors:
            raise InvalidEventError(f"invalid payload for {event}: " + "; ".join(errors))

    def get_execution(self, execution_id: str, *, tenant: str) -> Execution:
        """The execution's projection. Raises :class:`ExecutionNotFoundError` if it does not
        exist for ``tenant``."""
        _require_tenant(tenant)
        with self.store.read(tenant=tenant) as conn:
            row = self.store.execution_row(conn, execution_id, tenant)
        if row is None:
            raise ExecutionNotFoundError(f"execution {execution_id} not found")
        return Execution.from_row(row)

    def history(self, execution_id: str, *, tenant: str) -> list[HistoryEntry]:
        """Every record of the execution's ledger, in seq order."""
        _require_tenant(tenant)
        with self.store.read(tenant=tenant) as conn:
            if self.store.execution_row(conn, execution_id, tenant) is None:
                raise ExecutionNotFoundError(f"execution {execution_id} not found")
            stored = self.store.records(conn, execution_id, tenant)
        return [HistoryEntry.from_stored(s) for s in stored]

    def event_status(self, event_id: str, *, tenant: str) -> EventInfo:
        """Where the event stands. Raises :class:`EventNotFoundError` if it does not exist for
        ``tenant``."""
        _require_tenant(tenant)
        with self.store.read(tenant=tenant) as conn:
            row = self.store.event_row(conn, event_id, tenant)
        if row is None or row.kind != "event_received":
            raise EventNotFoundError(f"event {event_id} not found")
        return EventInfo(
            event_id=row.event_id,
            execution_id=row.execution_id,
            seq=row.seq,
            name=row.name,
            status=row.status,
            outcome=row.outcome,
            detail=row.detail,
        )

    def replay(self, execution_id: str, *, tenant: str) -> State:
        """The execution's state folded from its whole ledger, ignoring the projection: what
        the projection must equal."""
        entries = self.history(execution_id, tenant=tenant)
        first = entries[0].record
        assert first.kind == "execution_started"
        definition = self.definition(first.workflow, first.version)  # type: ignore[union-attr]
        return machine.fold(
            definition, [e.record for e in entries], versions=self._versions(definition.name)
        )

    def _versions(self, workflow: str) -> Callable[[int], Definition]:
        """The definitions of ``workflow``'s versions, by number: what folding a ledger that
        was migrated needs."""
        return lambda version: self.definition(workflow, version)

    # ----------------------------------------------------------------------------------------
    # Processing
    # ----------------------------------------------------------------------------------------

    def process(
        self,
        execution_id: str,
        *,
        tenant: str,
        lease: Lease,
        should_stop: Callable[[], bool] = lambda: False,
        release_when_idle: bool = False,
    ) -> int:
        """Decide and carry out every pending event of the execution, in seq order, while
        holding ``lease``; returns how many events were processed.

        Each event's decision, step outcomes, status and the new projection commit in one
        transaction, after the lease is checked: a worker that lost its lease writes nothing
        (:class:`~ledgerflow.errors.LeaseLostError`). ``should_stop`` is asked between events,
        so a stopping worker hands the execution back without leaving half an event recorded.
        Everything it does, the actions it runs included, is scoped to ``tenant``
        (:func:`~ledgerflow.store.tenant_scope`).

        With ``release_when_idle``, the lease is given up in the transaction that finds no
        event left to decide (the last event's commit, as a rule): when this returns, the
        lease is no longer held, unless ``should_stop`` cut the processing short or it
        raised. No wake-up is left behind: that transaction renews the lease before it looks
        for events, so a worker handed a newer event's wake-up either failed to take the lease
        before (and the look sees the event) or waits for the commit and takes it.
        """
        # the log fields of the events it takes up end with it
        with tenant_scope(tenant), logs.bound(execution_id=execution_id, tenant=tenant):
            return self._process(execution_id, tenant, lease, should_stop, release_when_idle)

    def take_and_process(
        self,
        execution_id: str,
        *,
        tenant: str,
        owner: str,
        ttl: float,
        should_stop: Callable[[], bool] = lambda: False,
        taken: Callable[[Lease], object] | None = None,
    ) -> int | None:
        """Take the execution's lease for ``owner`` (for ``ttl`` seconds) and process it as
        :meth:`process` does with ``release_when_idle``; returns how many events were
        processed, or ``None``, having written nothing, when someone holds the lease.

        The lease is taken in the transaction that reads the execution, one transaction less
        than :meth:`~ledgerflow.store.SQLStore.take_lease` then :meth:`process`. An execution
        not there for ``tenant`` raises :class:`~ledgerflow.errors.ExecutionNotFoundError`
        and leaves no lease behind. ``taken(lease)`` is called once the lease is held, before
        any event is decided (a worker keeps renewing it from there); if processing raises
        after that, the lease is still held.
        """
        with tenant_scope(tenant), logs.bound(execution_id=execution_id, tenant=tenant):
            try:
                return self._process(
                    execution_id, tenant, None, should_stop, True, take=(owner, ttl, taken)
                )
            except _LeaseHeld:
                return None

    def _process(
        self,
        execution_id: str,
        tenant: str,
        lease: Lease | None,
        should_stop: Callable[[], bool],
        release_when_idle: bool,
        *,
        take: tuple[str, float, Callable[[Lease], object] | None] | None = None,
    ) -> int:
        """Process under ``lease``, or under the lease ``take`` (owner, ttl, callback) takes
        in the transaction that loads the execution (:class:`_LeaseHeld` if it is held)."""
        began = (time.monotonic(), self.store.clock())
        with self.store.write(tenant=tenant) if take else self.store.read(tenant=tenant) as conn:
            if take is not None:
                owner, ttl, _ = take
                try:
                    token = self.store.take_lease_in(conn, execution_id, owner, ttl, tenant=tenant)
                except sa.exc.IntegrityError:
                    token = None  # another worker inserted it first (an upsert never does)
                if token is None:
                    raise _LeaseHeld
                lease = Lease(owner=owner, token=token, ttl=ttl)
            row = self.store.execution_row(conn, execution_id, tenant)
            if row is None:
                # raised inside the transaction: a lease taken in it is not kept
                raise ExecutionNotFoundError(f"execution {execution_id} not found")
            after = min(row.decided_seq, row.projection_seq)
            tail = self.store.records(conn, execution_id, tenant, after=after)
            undecided = [
                s.event_id
                for s in tail
                if s.record.kind == "event_received" and s.record.seq > row.decided_seq
            ]
            # the results already recorded for the events to decide, read once for all of them
            recorded = self.store.action_results_for(conn, execution_id, undecided, tenant=tenant)
        assert lease is not None
        # the results read with the lease just taken stay current while nobody else can take
        # it: a lease taken at ``began`` expires ``ttl`` later, and hosts' clocks agree to
        # well within half of it (see the deployment guide on clocks)
        recorded_until = None
        if take is not None:
            recorded_until = (began[0] + take[1] / 2, began[1] + take[1] / 2)
        if take is not None and take[2] is not None:
            take[2](lease)
        read_ahead = set(undecided)
        definition = self.definition(row.workflow, row.version)
        state = State(
            workflow=row.workflow,
            version=row.version,
            name=row.state,
            context=row.context,
            status=Status(row.status),
            seq=row.projection_seq,
            decided_seq=row.decided_seq,
        )
        state = machine.fold(
            definition, [s.record for s in tail if s.record.seq > state.seq], state
        )
        pending = [
            s
            for s in tail
            if s.record.kind == "event_received" and s.record.seq > state.decided_seq
        ]
        processed = 0
        settled = False  # the last commit saw nothing new and marked the wake-ups handled
        while not should_stop():
            if not pending:
                if settled:
                    break
                state, pending = self._settle(
                    definition, execution_id, tenant, lease, state, release=release_when_idle
                )
                if not pending:
                    break
            current = pending.pop(0)
            state, arrived = self._process_event(
                definition,
                execution_id,
                tenant,
                lease,
                state,
                current,
                recorded if current.event_id in read_ahead else None,
                recorded_until,
                release=release_when_idle and not pending,
            )
            settled = not arrived
            pending += arrived
            processed += 1
        return processed

    def _settle(
        self,
        definition: Definition,
        execution_id: str,
        tenant: str,
        lease: Lease,
        state: State,
        *,
        release: bool = False,
    ) -> tuple[State, list[StoredRecord]]:
        """With nothing left to decide: mark the execution's wake-ups handled (and give the
        lease up, if ``release``), unless events arrived meanwhile, which are returned to be
        processed."""
        with self.store.write(tenant=tenant) as conn:
            self.store.fence(conn, execution_id, lease.owner, lease.token, lease.ttl)
            arrived = self.store.records(conn, execution_id, tenant, after=state.seq)
            waiting = [a for a in arrived if a.record.kind == "event_received"]
            if not waiting:
                self.store.finish(
                    conn,
                    execution_id,
                    handled=True,
                    release=(lease.owner, lease.token) if release else None,
                )
        return machine.fold(definition, [a.record for a in arrived], state), waiting

    def _process_event(
        self,
        definition: Definition,
        execution_id: str,
        tenant: str,
        lease: Lease,
        state: State,
        stored: StoredRecord,
        recorded: Mapping[str, JSON] | None = None,
        recorded_until: tuple[float, float] | None = None,
        *,
        release: bool = False,
    ) -> tuple[State, list[StoredRecord]]:
        """Decide and carry out one event, and commit what it did; returns the new state and
        the events that arrived meanwhile. With ``release``, a commit that finds none gives
        the lease up (see :meth:`process`)."""
        event = stored.record
        assert isinstance(event, EventReceived)
        logs.begin_event(stored.event_id, enqueued_at=stored.created_at)
        self.plugins.notify(
            "ledgerflow_event_started",
            execution_id=execution_id,
            tenant=tenant,
            event_id=stored.event_id,
            event=event.name,
            payload=event.payload,
        )
        if event.origin == "system" and event.name == RETRY_EVENT:
            plan = self._retry_plan(definition, execution_id, tenant, lease, state, stored)
        else:
            plan = self._event_plan(
                definition, execution_id, tenant, lease, state, stored, recorded, recorded_until
            )
        for attempt in range(_COMMIT_ATTEMPTS):
            try:
                with self.store.write(tenant=tenant) as conn:
                    self.store.fence(
                        conn, execution_id, lease.owner, lease.token, lease.ttl, lock=True
                    )
                    arrived = self.store.records(conn, execution_id, tenant, after=state.seq)
                    base = machine.fold(definition, [a.record for a in arrived], state)
                    new = plan.build(base.seq + 1)
                    self.store.insert_records(conn, execution_id, tenant, new)
                    self.store.insert_action_results(conn, plan.results)
                    after = machine.fold(definition, new, base)
                    cancel = _reset_timers(
                        self.store, conn, definition, execution_id, tenant, new, after
                    )
                    every = self.store.snapshot_every
                    if every > 0 and after.seq // every > state.seq // every:
                        self.store.save_snapshot(conn, execution_id, tenant, after)
                    waiting = [a for a in arrived if a.record.kind == "event_received"]
                    # the outcomes, the projection, and with nothing waiting the wake-ups
                    # handled and the lease given up: one statement on PostgreSQL
                    self.store.finish(
                        conn,
                        execution_id,
                        outcomes=plan.outcomes,
                        projection=after,
                        handled=not waiting,
                        release=(lease.owner, lease.token) if release and not waiting else None,
                        cancel_timers=cancel,
                    )
                self._announce(execution_id, tenant, stored, plan, new, base, after)
                return after, waiting
            except sa.exc.IntegrityError:
                log.debug("execution %s: a client appended during commit; retrying", execution_id)
                time.sleep(min(0.001 * 2**attempt, 0.05))
        raise LedgerflowError(f"execution {execution_id}: could not commit event {event.seq}")

    def _announce(
        self,
        execution_id: str,
        tenant: str,
        stored: StoredRecord,
        plan: _Plan,
        new: list[Record],
        before: State,
        after: State,
    ) -> None:
        """Tell the plugins what one committed event did."""
        events = {stored.record.seq: (stored.event_id, getattr(stored.record, "name", ""))}
        events.update(plan.events)
        hook = self.plugins.notify
        for record in new:
            if isinstance(record, TransitionApplied):
                event_id = events.get(record.event_seq, ("", ""))[0]
                hook(
                    "ledgerflow_transition_applied",
                    execution_id=execution_id,
                    tenant=tenant,
                    event_id=event_id,
                    transition=record.transition,
                    source=record.source,
                    target=record.target,
                )
            elif isinstance(record, EventRejected):
                event_id, name = events.get(record.event_seq, ("", ""))
                hook(
                    "ledgerflow_event_rejected",
                    execution_id=execution_id,
                    tenant=tenant,
                    event_id=event_id,
                    event=name,
                    reason=record.reason.value,
                    detail=record.detail,
                )
            elif isinstance(record, ExecutionFailed):
                hook(
                    "ledgerflow_execution_failed",
                    execution_id=execution_id,
                    tenant=tenant,
                    reason=record.reason,
                )
            elif isinstance(record, TransitionReverted):
                hook(
                    "ledgerflow_transition_reverted",
                    execution_id=execution_id,
                    tenant=tenant,
                    event_id=events.get(record.event_seq, ("", ""))[0],
                    transition=record.transition,
                    source=record.source,
                    target=record.target,
                )
            elif isinstance(record, ExecutionResumed):
                hook(
                    "ledgerflow_execution_resumed",
                    execution_id=execution_id,
                    tenant=tenant,
                    retried_event_id=events.get(record.retried_seq, ("", ""))[0],
                    requested_by=record.requested_by,
                )
        for seq, status, outcome, detail in plan.outcomes:
            event_id, name = events.get(seq, ("", ""))
            hook(
                "ledgerflow_event_processed",
                execution_id=execution_id,
                tenant=tenant,
                event_id=event_id,
                event=name,
                status=status,
                outcome=outcome,
                detail=detail,
            )
        if after.status is Status.COMPLETED and before.status is not Status.COMPLETED:
            hook(
                "ledgerflow_execution_completed",
                execution_id=execution_id,
                tenant=tenant,
                state=after.name,
            )

    def _job(
        self,
        execution_id: str,
        tenant: str,
        lease: Lease,
        event_id: str,
        steps: tuple[CompiledStep, ...],
        event: EventReceived,
        before: State,
    ) -> StepJob:
        return StepJob(
            execution_id=execution_id,
            tenant=tenant,
            event_id=event_id,
            steps=steps,
            variables={
                "payload": dict(event.payload),
                "context": dict(before.context),
                "role": event.role,
                "event": event.name,
                "state": before.name,
            },
            # a step's result is recorded only while the lease is held, checked by the
            # statement that records it (the event's commit renews the lease): steps running
            # side by side share-lock the lease row, and do not queue on it
            lease=(lease.owner, lease.token),
        )

    def _event_plan(
        self,
        definition: Definition,
        execution_id: str,
        tenant: str,
        lease: Lease,
        state: State,
        stored: StoredRecord,
        recorded: Mapping[str, JSON] | None = None,
        recorded_until: tuple[float, float] | None = None,
    ) -> _Plan:
        """Decide a client's (or timer's) event and run the steps of the transition it applies
        (``recorded``: the results recorded for its steps, if read already; current until
        ``recorded_until``, see :attr:`ledgerflow.executor.StepJob.recorded_until`)."""
        event = stored.record
        assert isinstance(event, EventReceived)
        decision = machine.decide(definition, state, event)
        if not isinstance(decision, Accepted):

            def rejected(first: int) -> list[Record]:
                return [decision.record(seq=first, event_seq=event.seq)]

            reason = (decision.reason.value, decision.detail)
            return _Plan(rejected, [(event.seq, "rejected", *reason)])
        compiled = next(ct for ct in definition.transitions if ct.id == decision.transition)
        job = self._job(execution_id, tenant, lease, stored.event_id, compiled.steps, event, state)
        if compiled.steps:
            until = recorded_until if recorded is not None else None
            job = attrs.evolve(job, recorded=recorded, recorded_until=until)
            result = self.runner.run(job)
        else:
            result = RunResult(outcomes=())
        context_steps = _context_steps(compiled.steps)

        def build(first: int) -> list[Record]:
            applied = decision.record(seq=first, event_seq=event.seq)
            new: list[Record] = [applied]
            new += _step_records(result, event.seq, first + 1, context_steps)
            new += _ending(result, event.seq, first + len(new), applied, state.context)
            return new

        return _Plan(
            build,
            [(event.seq, *_event_outcome(result, decision.target))],
            results=result.unrecorded,
        )

    def _retry_plan(
        self,
        definition: Definition,
        execution_id: str,
        tenant: str,
        lease: Lease,
        state: State,
        stored: StoredRecord,
    ) -> _Plan:
        """Resume a failed execution: run again what its failed event left undone."""
        event = stored.record
        assert isinstance(event, EventReceived)
        if state.status is not Status.FAILED:
            detail = f"the execution is {state.status.value}: nothing to retry"

            def not_failed(first: int) -> list[Record]:
                return [
                    EventRejected(
                        seq=first,
                        event_seq=event.seq,
                        reason=RejectReason.NOT_FAILED,
                        detail=detail,
                    )
                ]

            return _Plan(
                not_failed, [(event.seq, "rejected", RejectReason.NOT_FAILED.value, detail)]
            )
        with self.store.read(tenant=tenant) as conn:
            ledger = self.store.records(conn, execution_id, tenant)
        failed = next(s.record for s in reversed(ledger) if isinstance(s.record, ExecutionFailed))
        n = failed.event_seq
        original = ledger[n - 1]
        assert isinstance(original.record, EventReceived)
        assert original.record.seq == n
        applied = next(
            s.record
            for s in ledger
            if isinstance(s.record, TransitionApplied) and s.record.event_seq == n
        )
        before = machine.fold(
            definition,
            [s.record for s in ledger[: n - 1]],
            versions=self._versions(definition.name),
        )
        compiled = next(ct for ct in definition.transitions if ct.id == applied.transition)
        mine = [s.record for s in ledger if getattr(s.record, "event_seq", None) == n]
        succeeded = [r.step_id for r in mine if isinstance(r, StepSucceeded)]
        results = {r.step_id: r.result for r in mine if isinstance(r, StepSucceeded)}
        undone = {r.step_id for r in mine if isinstance(r, StepCompensated)}
        job = self._job(
            execution_id, tenant, lease, original.event_id, compiled.steps, original.record, before
        )
        # what failed first: the failure that started the compensation, if there was one
        cause = next(
            (
                f"step {r.step_id!r} failed: {r.error}"
                for r in mine
                if isinstance(r, StepFailed) and not r.error.startswith("compensation:")
            ),
            failed.reason,
        )
        # a ledger written before compensating failures were marked shows them by their
        # step_compensated records: those steps are undone, not done
        if failed.compensating or undone:
            result = self.runner.compensate(job, succeeded, results, cause)
            fresh = [
                o
                for o in result.outcomes
                if not (o.status == "compensated" and o.step_id in undone)
            ]
        else:
            result = self.runner.run(job)
            done = set(succeeded)
            fresh = [
                o for o in result.outcomes if not (o.status == "succeeded" and o.step_id in done)
            ]
        result = attrs.evolve(result, outcomes=tuple(fresh))
        context_steps = _context_steps(compiled.steps)
        requested_by = event.payload.get("requested_by")

        def build(first: int) -> list[Record]:
            new: list[Record] = [
                ExecutionResumed(
                    seq=first,
                    event_seq=event.seq,
                    retried_seq=n,
                    requested_by=requested_by if isinstance(requested_by, str) else None,
                )
            ]
            new += _step_records(result, n, first + 1, context_steps)
            new += _ending(result, n, first + len(new), applied, before.context)
            return new

        status, outcome, detail = _event_outcome(result, applied.target)
        return _Plan(
            results=result.unrecorded,
            events={n: (original.event_id, original.record.name)},
            build=build,
            outcomes=[
                (n, status, outcome, detail),
                (
                    event.seq,
                    "failed" if outcome == "failed" else "processed",
                    "retried",
                    f"event {n}: {outcome}" + (f" ({detail})" if detail else ""),
                ),
            ],
        )


def _timer_event(name: str, payload: Mapping[str, JSON] | None) -> Callable[[int], EventReceived]:
    """What a timer appends: its event, sent by the timer, with the payload a step scheduled
    it with (a state's timer has none)."""
    return lambda seq: EventReceived(
        seq=seq, name=name, payload=dict(payload or {}), origin="timer"
    )


def _reset_timers(
    store: SQLStore,
    conn: sa.Connection,
    definition: Definition,
    execution_id: str,
    tenant: str,
    new: list[Record],
    after: State,
) -> bool | None:
    """Inside the transaction that commits ``new``: if it moves the execution (a transition,
    or its reversal), cancel the timers of the state left and arm those of the state entered
    by the last move, unless the execution is finished there.

    A cancel that arms nothing after it is left to the caller, who makes it in the same
    transaction (:meth:`~ledgerflow.store.sql.SQLStore.finish`, a statement less): what is
    returned is then ``scheduled`` for :meth:`~ledgerflow.store.sql.SQLStore.cancel_timers`,
    or ``None`` for nothing to cancel.
    """
    moves = [r for r in new if isinstance(r, TransitionApplied | TransitionReverted)]
    if not moves:
        return None
    finished = after.status is Status.COMPLETED
    arming = not finished and bool(
        definition.timers(after.name) or definition.deadlines(after.name)
    )
    if not arming:
        return finished
    store.cancel_timers(conn, execution_id, scheduled=finished)
    _arm_timers(store, conn, definition, execution_id, tenant, moves[-1].seq, after)
    return None


def _arm_timers(
    store: SQLStore,
    conn: sa.Connection,
    definition: Definition,
    execution_id: str,
    tenant: str,
    seq: int,
    state: State,
) -> None:
    """Arm the timers of the state the execution is in: each ``after`` from now, each ``at``
    at the time its expression gives over the context (none for ``null``, and none, with a
    warning, for an expression that fails or gives no time: the state is entered all the
    same)."""
    due: list[tuple[str, float]] = []
    for event, deadline in definition.deadlines(state.name):
        try:
            moment = deadline.moment({"context": state.context, "state": state.name})
        except ExpressionError as exc:
            log.warning("execution %s: the timer for %s is not armed: %s", execution_id, event, exc)
            continue
        if moment is not None:
            due.append((event, moment))
    store.arm_timers(conn, execution_id, tenant, seq, definition.timers(state.name), at=due)


@attrs.frozen
class _Plan:
    """What processing one event writes: its records, numbered from the seq given to
    ``build``, and the ``(seq, status, outcome, detail)`` of each event it settles."""

    build: Callable[[int], list[Record]]
    outcomes: list[tuple[int, str, str | None, str | None]]
    events: dict[int, tuple[str, str]] = attrs.field(factory=dict)
    """The event id and name of each settled event other than the one processed, by seq."""
    results: list[Mapping[str, Any]] = attrs.field(factory=list)
    """The results of the actions its steps ran that are not checkpointed, recorded with its
    records (:attr:`ledgerflow.executor.StepOutcome.unrecorded`)."""


def _context_steps(steps: tuple[CompiledStep, ...]) -> frozenset[str]:
    return frozenset(cs.step.id for cs in steps if cs.step.action == SET_CONTEXT)


def _event_outcome(result: RunResult, target: str) -> tuple[str, str, str]:
    """The status, outcome and detail of an event whose transition ran ``result``."""
    if result.failure is None:
        return "processed", "applied", target
    if result.compensated and result.compensation_failure is None:
        return "failed", "compensated", result.failure
    return "failed", "failed", result.compensation_failure or result.failure


def _ending(
    result: RunResult,
    event_seq: int,
    seq: int,
    applied: TransitionApplied,
    context_before: Mapping[str, JSON],
) -> list[Record]:
    """The record closing a run: none when it succeeded, the transition's reversal when it
    failed and was wholly compensated, the execution's failure otherwise."""
    if result.failure is None:
        return []
    if result.compensated and result.compensation_failure is None:
        return [
            TransitionReverted(
                seq=seq,
                event_seq=event_seq,
                transition=applied.transition,
                source=applied.target,
                target=applied.source,
                context=context_before,
            )
        ]
    return [
        ExecutionFailed(
            seq=seq,
            event_seq=event_seq,
            reason=result.compensation_failure or result.failure,
            compensating=result.compensation_failure is not None,
        )
    ]


def _step_records(
    result: RunResult, event_seq: int, first_seq: int, context_steps: frozenset[str]
) -> list[Record]:
    """The records of a run's step outcomes, numbered from ``first_seq``; a ``set_context``
    step's values follow its success."""
    new: list[Record] = []
    for o in result.outcomes:
        seq = first_seq + len(new)
        record: Record
        if o.status == "succeeded":
            record = StepSucceeded(seq=seq, event_seq=event_seq, step_id=o.step_id, result=o.result)
        elif o.status == "compensated":
            record = StepCompensated(
                seq=seq, event_seq=event_seq, step_id=o.step_id, result=o.result
            )
        else:
            record = StepFailed(seq=seq, event_seq=event_seq, step_id=o.step_id, error=o.error)
        new.append(
            attrs.evolve(record, attempts=o.attempts, started_at=o.started_at, duration=o.duration)
        )
        if o.status == "succeeded" and o.step_id in context_steps and isinstance(o.result, Mapping):
            new.append(
                ContextUpdated(seq=seq + 1, event_seq=event_seq, step_id=o.step_id, values=o.result)
            )
    return new


_MAX_NAME = 200


def _require_tenant(tenant: object) -> None:
    if not isinstance(tenant, str) or not tenant.strip():
        raise InvalidInputError("a tenant is required: a non-empty string")
    if tenant == ALL_TENANTS:
        raise InvalidInputError(f"{ALL_TENANTS!r} is not a tenant: it stands for every tenant")
    _require_name(tenant, "tenant")


def _require_name(value: str, what: str, limit: int = _MAX_NAME) -> None:
    if len(value) > limit:
        raise InvalidInputError(f"the {what} is longer than {limit} characters")
    if "\x00" in value:
        raise InvalidInputError(f"the {what} holds a NUL character")
    _require_unicode(value, what)


def _require_unicode(text: str, what: str) -> None:
    """Refuse text that is not Unicode a database (or a broker) can store: a lone surrogate,
    which no UTF-8 encoding holds."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"the {what} holds a character that is not Unicode text ({exc.object[exc.start]!r})"
        ) from None


def _require_json(value: Any, what: str) -> None:
    problem = unstorable(value)
    if problem is None:
        return
    kind, detail = problem
    said = {
        "not_json": f"must be JSON: {detail}",
        "too_deep": "is nested too deeply to be stored",
        "nul": "holds a NUL character, which cannot be stored",
        "not_unicode": f"holds a character that is not Unicode text ({detail})",
    }[kind]
    raise InvalidInputError(f"the {what} {said}")


def _retryable(exc: sa.exc.DBAPIError) -> bool:
    return getattr(exc.orig, "sqlstate", "") in ("40001", "40P01")
