"""The built-in actions.

- ``ledgerflow.record``: returns its parameters, so they are kept in the ledger as the step's
  result; for steps whose only job is to leave an audited trace.
- ``ledgerflow.set_context``: merges its parameters into the execution's context once the step
  succeeds (recorded as ``context_updated``); later events see them, and so do conditions.
- ``ledgerflow.notify``: sends ``message`` to ``channel`` through a notifier (``log``, the
  ``ledgerflow.notify`` logger, unless the step names another) and returns what was sent.
- ``ledgerflow.db.insert`` / ``update`` / ``delete``: exactly-once changes to the application's
  own tables in ledgerflow's database, scoped to the execution's tenant.
- ``ledgerflow.http_request``: one HTTP call, at least once, sending the step's idempotency key
  as the ``Idempotency-Key`` header; the answer's status and body are the result.
- ``ledgerflow.emit_event``: appends an event to this or another execution of the tenant,
  exactly once.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NoReturn

import sqlalchemy as sa

from ledgerflow import durations
from ledgerflow.errors import InvalidParametersError
from ledgerflow.expressions import as_moment
from ledgerflow.model import JSON, EventReceived
from ledgerflow.notifiers import LogNotifier, Notifier
from ledgerflow.registry import ActionContext, ActionRegistry, Isolation, Param

if TYPE_CHECKING:
    from ledgerflow.engine import Engine

__all__ = [
    "register_builtin_actions",
    "register_database_actions",
    "register_emit_event",
    "register_http_request",
    "register_notify",
]

SET_CONTEXT = "ledgerflow.set_context"
"""The action whose result the engine merges into the context (a ``context_updated`` record)."""


def _record(params: dict[str, Any], context: ActionContext) -> dict[str, Any]:
    return dict(params)


def _set_context(params: dict[str, Any], context: ActionContext) -> dict[str, Any]:
    return dict(params)


def register_notify(registry: ActionRegistry, notifiers: Mapping[str, Notifier]) -> None:
    """Register ``ledgerflow.notify``: send ``message`` to ``channel`` through the notifier
    named ``notifier`` (default ``log``) among ``notifiers``, with the notifier's ``options``."""

    def notify(params: dict[str, Any], context: ActionContext) -> JSON:
        name = params["notifier"]
        if name not in notifiers:
            known = ", ".join(sorted(notifiers)) or "none"
            raise InvalidParametersError(
                "ledgerflow.notify", [f"notifier: no notifier named {name!r} (known: {known})"]
            )
        return notifiers[name].send(
            params["channel"], params["message"], params["options"], context
        )

    registry.register_simple_action(
        "ledgerflow.notify",
        "Send a message to a channel through a notifier (log, or one a plugin adds).",
        [
            Param(name="channel", type="string", description="Where the message goes."),
            Param(name="message", type="string", description="What it says."),
            Param(
                name="notifier",
                type="string",
                required=False,
                default="log",
                description="The notifier's name: log, or one a plugin registers.",
            ),
            Param(
                name="options",
                type="object",
                required=False,
                default={},
                description="Settings for the notifier (a webhook's url, an email's to, ...).",
            ),
        ],
        notify,
    )


def register_builtin_actions(
    registry: ActionRegistry, notifiers: Mapping[str, Notifier] | None = None
) -> None:
    """Register every built-in action but ``ledgerflow.emit_event`` (which needs an engine) in
    ``registry``; ``ledgerflow.notify`` sends through ``notifiers`` (default: ``log`` only)."""
    register_database_actions(registry)
    register_http_request(registry)
    register_notify(registry, notifiers if notifiers is not None else {"log": LogNotifier()})
    registry.register_simple_action(
        "ledgerflow.record",
        "Keep the given parameters in the ledger as the step's result.",
        [],
        _record,
        additional_params=True,
    )
    registry.register_simple_action(
        SET_CONTEXT,
        "Merge the given parameters into the execution's context.",
        [],
        _set_context,
        additional_params=True,
    )


# --------------------------------------------------------------------------------------------
# Database actions on the application's own tables
# --------------------------------------------------------------------------------------------


class _Tables:
    """The application's tables, read from the database once per engine and table name."""

    def __init__(self) -> None:
        self._known: dict[tuple[int, str], sa.Table] = {}
        self._lock = threading.Lock()

    def get(self, conn: sa.Connection, name: str) -> sa.Table:
        if not isinstance(name, str) or not name:
            raise ValueError("table must be a table name")
        if name.lower().startswith("lf_"):
            raise ValueError(f"table {name!r} belongs to ledgerflow; actions cannot change it")
        key = (id(conn.engine), name)
        with self._lock:
            table = self._known.get(key)
        if table is None:
            try:
                table = sa.Table(name, sa.MetaData(), autoload_with=conn)
            except sa.exc.NoSuchTableError:
                raise ValueError(f"no table {name!r} in the database") from None
            with self._lock:
                self._known[key] = table
        return table


def _columns(table: sa.Table, given: dict[str, Any], what: str) -> None:
    unknown = sorted(set(given) - set(table.c.keys()))
    if unknown:
        raise ValueError(f"{what}: table {table.name!r} has no column {', '.join(unknown)}")


def _scoped(table: sa.Table, values: dict[str, Any], tenant: str, what: str) -> dict[str, Any]:
    """``values`` with the tenant column set to the execution's tenant, when the table has one;
    naming another tenant is an error."""
    if "tenant" not in table.c:
        return dict(values)
    if values.get("tenant", tenant) != tenant:
        raise ValueError(f"{what}: tenant {values['tenant']!r} is not this execution's tenant")
    return {**values, "tenant": tenant}


def register_database_actions(registry: ActionRegistry) -> None:
    """Register ``ledgerflow.db.insert``, ``ledgerflow.db.update`` and ``ledgerflow.db.delete``:
    exactly-once changes to the application's tables in ledgerflow's database.

    A table with a ``tenant`` column is scoped to the execution's tenant: inserted rows get it,
    updates and deletes only touch its rows. ledgerflow's own tables (``lf_*``) are refused.
    """
    tables = _Tables()

    def insert(params: dict[str, Any], context: ActionContext) -> dict[str, Any]:
        assert context.connection is not None
        table = tables.get(context.connection, params["table"])
        values = _scoped(table, params["values"], context.tenant, "values")
        _columns(table, values, "values")
        context.connection.execute(table.insert().values(**values))
        return {"table": table.name, "inserted": 1}

    def _where(table: sa.Table, params: dict[str, Any], tenant: str) -> list[Any]:
        where = _scoped(table, params["where"], tenant, "where")
        if not params["where"]:
            raise ValueError("where must name at least one column: whole-table changes are refused")
        _columns(table, where, "where")
        return [table.c[column] == value for column, value in where.items()]

    def update(params: dict[str, Any], context: ActionContext) -> dict[str, Any]:
        assert context.connection is not None
        table = tables.get(context.connection, params["table"])
        _columns(table, params["values"], "values")
        if "tenant" in params["values"] and "tenant" in table.c:
            raise ValueError("values: the tenant of a row cannot be changed")
        done = context.connection.execute(
            table.update().where(*_where(table, params, context.tenant)).values(**params["values"])
        )
        return {"table": table.name, "updated": done.rowcount}

    def delete(params: dict[str, Any], context: ActionContext) -> dict[str, Any]:
        assert context.connection is not None
        table = tables.get(context.connection, params["table"])
        done = context.connection.execute(
            table.delete().where(*_where(table, params, context.tenant))
        )
        return {"table": table.name, "deleted": done.rowcount}

    table_param = Param(name="table", type="string", description="The table's name.")
    registry.register_database_action(
        "ledgerflow.db.insert",
        "Insert one row (column: value) into a table of ledgerflow's database, exactly once.",
        [table_param, Param(name="values", type="object", description="Column values.")],
        Isolation.READ_COMMITTED,
        insert,
    )
    registry.register_database_action(
        "ledgerflow.db.update",
        "Set column values on the rows matching every where column, exactly once.",
        [
            table_param,
            Param(name="values", type="object", description="Columns to set."),
            Param(name="where", type="object", description="Column values rows must have."),
        ],
        Isolation.READ_COMMITTED,
        update,
    )
    registry.register_database_action(
        "ledgerflow.db.delete",
        "Delete the rows matching every where column, exactly once.",
        [
            table_param,
            Param(name="where", type="object", description="Column values rows must have."),
        ],
        Isolation.READ_COMMITTED,
        delete,
    )


# --------------------------------------------------------------------------------------------
# Events from steps
# --------------------------------------------------------------------------------------------


def register_emit_event(registry: ActionRegistry, engine: Engine) -> None:
    """Register ``ledgerflow.emit_event``: append an event to this execution or another one of
    the same tenant, exactly once, in the step's own transaction.

    The event is checked like a client's (known to the target's workflow version, payload valid
    against its schema), carries the step's idempotency key as its client key, and is marked as
    sent by the system, so transitions' role lists do not apply to it.
    """

    def emit(params: dict[str, Any], context: ActionContext) -> dict[str, Any]:
        conn = context.connection
        assert conn is not None
        target = params.get("execution_id") or context.execution_id
        row = engine.store.execution_row(conn, target, context.tenant)
        if row is None:
            raise ValueError(f"execution {target} not found")
        definition = engine.definition(row.workflow, row.version)
        engine.check_event(definition, params["event"], params["payload"])
        existing = engine.store.event_by_key(conn, target, context.idempotency_key)
        if existing is not None:
            return {"execution_id": target, "event_id": existing}
        for _ in range(20):
            try:
                with conn.begin_nested():
                    engine.store.lock_execution(conn, target)
                    seq = engine.store.last_seq(conn, target) + 1
                    record = EventReceived(
                        seq=seq, name=params["event"], payload=params["payload"], origin="system"
                    )
                    (event_id,) = engine.store.insert_records(
                        conn, target, context.tenant, [record], client_key=context.idempotency_key
                    )
                return {"execution_id": target, "event_id": event_id}
            except sa.exc.IntegrityError:
                continue  # a client appended at this seq first: take the next one
        raise RuntimeError(f"could not append to {target}: concurrent appends kept winning")

    registry.register_database_action(
        "ledgerflow.emit_event",
        "Append an event to this execution, or another of the same tenant, exactly once.",
        [
            Param(name="event", type="string", description="The event's name."),
            Param(
                name="payload",
                type="object",
                required=False,
                default={},
                description="Its payload.",
            ),
            Param(
                name="execution_id",
                type="string",
                required=False,
                default="",
                description="The execution to send it to (default: this one).",
            ),
        ],
        Isolation.READ_COMMITTED,
        emit,
    )


def register_schedule_event(registry: ActionRegistry, engine: Engine) -> None:
    """Register ``ledgerflow.schedule_event``: have this execution receive an event later,
    ``after`` a duration or ``at`` a time, exactly once.

    The timer is a row of the ledger's database written in the step's own transaction, so it
    exists exactly when the step's result does, and it is keyed by the step's idempotency key.
    The event is checked now like a client's (known to the execution's workflow version,
    payload valid), is appended by a worker when due, whatever state the execution is in then
    (a transition that does not take it rejects it), and is sent by the timer, so roles do not
    apply to it. The timer is cancelled only if the execution completes first.
    """

    def schedule(params: dict[str, Any], context: ActionContext) -> dict[str, Any]:
        conn = context.connection
        assert conn is not None
        event, payload, after, at = (
            params["event"],
            params["payload"],
            params["after"],
            params["at"],
        )
        if bool(after) == (at is not None):
            raise ValueError(
                "give either 'after' (a duration) or 'at' (a time), not both or neither"
            )
        row = engine.store.execution_row(conn, context.execution_id, context.tenant)
        if row is None:
            raise ValueError(f"execution {context.execution_id} not found")
        engine.check_event(engine.definition(row.workflow, row.version), event, payload)
        if after:
            due = engine.store.clock() + durations.parse(after)
        else:
            moment = as_moment(at, "at")
            if moment is None:  # pragma: no cover - None was refused above
                raise ValueError("'at' is required")
            due = moment
        timer_id = hashlib.sha256(context.idempotency_key.encode()).hexdigest()[:32]
        engine.store.schedule_timer(
            conn, timer_id, context.execution_id, context.tenant, event, due, payload
        )
        return {"timer_id": timer_id, "event": event, "due_at": due}

    registry.register_database_action(
        "ledgerflow.schedule_event",
        "Have this execution receive an event later, after a duration or at a time, exactly once.",
        [
            Param(name="event", type="string", description="The event's name."),
            Param(
                name="payload",
                type="object",
                required=False,
                default={},
                description="Its payload.",
            ),
            Param(
                name="after",
                type="string",
                required=False,
                default="",
                description="How long from now: a duration such as 48h or PT48H.",
            ),
            Param(
                name="at",
                type="any",
                required=False,
                default=None,
                description="When: an ISO 8601 time (UTC unless it says otherwise) or seconds "
                "since the epoch.",
            ),
        ],
        Isolation.READ_COMMITTED,
        schedule,
    )


# --------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------


def _http_request(params: dict[str, Any], context: ActionContext) -> dict[str, Any]:
    import httpx

    method = params["method"].upper()
    if method not in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"):
        raise ValueError(
            f"method {params['method']!r} is not one of GET, POST, PUT, PATCH, DELETE, HEAD"
        )
    headers = {str(k): str(v) for k, v in params["headers"].items()}
    # the receiving service can drop a repeat: the key is the same on every retry
    headers.setdefault("Idempotency-Key", context.idempotency_key)
    response = httpx.request(
        method,
        params["url"],
        headers=headers,
        json=params["json"],
        timeout=params["timeout"],
    )
    if params["raise_for_status"]:
        response.raise_for_status()
    try:
        # NaN and Infinity, which Python's parser takes, are not JSON: such a body is text
        body: Any = json.loads(response.content, parse_constant=_not_json)
    except ValueError:
        body = response.text
    return {"status": response.status_code, "body": body}


def _not_json(constant: str) -> NoReturn:
    raise ValueError(f"{constant} is not JSON")


def register_http_request(registry: ActionRegistry) -> None:
    """Register ``ledgerflow.http_request``: one HTTP call, at least once, with the step's
    idempotency key sent as the ``Idempotency-Key`` header."""
    registry.register_simple_action(
        "ledgerflow.http_request",
        "Make one HTTP request, sending the step's idempotency key as Idempotency-Key.",
        [
            Param(name="url", type="string", description="The URL to call."),
            Param(
                name="method",
                type="string",
                required=False,
                default="POST",
                description="The method.",
            ),
            Param(
                name="json", type="any", required=False, default=None, description="A JSON body."
            ),
            Param(
                name="headers",
                type="object",
                required=False,
                default={},
                description="Extra headers.",
            ),
            Param(
                name="timeout", type="number", required=False, default=10, description="Seconds."
            ),
            Param(
                name="raise_for_status",
                type="boolean",
                required=False,
                default=True,
                description="Fail the step on a 4xx or 5xx answer.",
            ),
        ],
        _http_request,
    )
