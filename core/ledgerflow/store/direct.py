"""The store's fixed statements, run on psycopg directly when the database is PostgreSQL.

SQLAlchemy caches the compiled form of a statement, yet running a cached statement still
costs about three times the client CPU that psycopg alone spends on it (an execution context,
parameter and result processing per call). On a worker that was the largest share of its CPU.
:func:`run` compiles each statement once per parameter shape, exactly as SQLAlchemy would
(the same SQL, the same bind processors), with PostgreSQL's own ``$n`` placeholders, and hands
it to a raw psycopg cursor of the connection, inside the transaction SQLAlchemy began: psycopg
then sends the SQL as it is, instead of parsing it for placeholders at every call (which it
does for any statement longer than it caches, an event's commit of many records among them).

It promises what running the statement through SQLAlchemy promises:

- the same rows (attribute and index access), ``rowcount``, ``first``, ``scalar``,
  ``scalar_one``, ``one`` and ``all``;
- the same errors: a database error is raised as the :mod:`sqlalchemy.exc` class SQLAlchemy
  would raise (``IntegrityError`` for a unique violation, and so on), and a connection the
  server dropped is invalidated and flagged (``connection_invalidated``) as SQLAlchemy does;
- every statement seen by whoever listens: while anything listens to SQLAlchemy's cursor or
  error events on the connection (tracing, a test counting statements), statements go
  through SQLAlchemy instead.

Any other database or driver, and any statement whose compiled form needs work at execution
time (expanding ``IN`` lists, defaults computed in Python), also go through SQLAlchemy.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import attrs
import sqlalchemy as sa
from sqlalchemy.engine import Connection

__all__ = ["Rows", "begin_with_tenant", "run"]

_CURSOR = "ledgerflow_direct_cursor"


class Rows:
    """The rows a statement returned (none for one that returns none), read as SQLAlchemy's
    result is read."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount
        """The rows the statement matched or changed, as the driver reports them."""

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)

    def first(self) -> Any:
        """The first row, or ``None``."""
        return self._rows[0] if self._rows else None

    def all(self) -> list[Any]:
        """Every row."""
        return list(self._rows)

    def scalar(self) -> Any:
        """The first column of the first row, or ``None``."""
        return self._rows[0][0] if self._rows else None

    def one(self) -> Any:
        """The only row: :class:`sqlalchemy.exc.NoResultFound` or
        :class:`sqlalchemy.exc.MultipleResultsFound` otherwise."""
        if not self._rows:
            raise sa.exc.NoResultFound("No row was found when one was required")
        if len(self._rows) > 1:
            raise sa.exc.MultipleResultsFound("Multiple rows were found when one was required")
        return self._rows[0]

    def scalar_one(self) -> Any:
        """The first column of the only row (see :meth:`one`)."""
        return self.one()[0]


@attrs.frozen
class _Plan:
    """A statement compiled for one parameter shape: its SQL and how to bind its values."""

    statement: Any  # kept, so that the id in the cache key is never reused
    sql: str | None  # None: this shape goes through SQLAlchemy
    compiled: Any
    processors: Mapping[str, Callable[[Any], Any]]
    order: tuple[str, ...]  # the parameter of each placeholder, $1 first


_PLANS: dict[tuple[int, int, tuple[str, ...], bool], _Plan] = {}
_DOLLAR = "_ledgerflow_dollar_dialect"


def _dollar(dialect: Any) -> Any:
    """``dialect`` compiling to PostgreSQL's ``$n`` placeholders (its own paramstyle is
    psycopg's ``%(name)s``); everything else it renders is the same, but a ``%`` stays one
    (psycopg's style doubles it, and psycopg halves it again; a raw cursor sends the SQL as
    it is). Made once, and kept with the dialect."""
    variant = getattr(dialect, _DOLLAR, None)
    if variant is None:
        variant = copy.copy(dialect)
        variant.paramstyle = "numeric_dollar"
        variant.positional = True
        # the preparer decides whether percent signs are doubled, by the paramstyle it was
        # made for: the original's is psycopg's
        variant.identifier_preparer = variant.preparer(variant)
        setattr(dialect, _DOLLAR, variant)
    return variant


def _plan(conn: Connection, statement: Any, keys: tuple[str, ...], many: bool) -> _Plan:
    dialect = conn.dialect
    compiled = statement.compile(
        dialect=_dollar(dialect), column_keys=list(keys), for_executemany=many
    )
    direct = not (
        compiled.literal_execute_params
        or compiled.post_compile_params
        or compiled.insert_prefetch
        or compiled.update_prefetch
        or compiled.escaped_bind_names
        or compiled.schema_translate_map
        or not compiled.positional
    )
    plan = _Plan(
        (statement, dialect),
        compiled.string if direct else None,
        compiled,
        dict(compiled._bind_processors),
        tuple(compiled.positiontup or ()),
    )
    _PLANS[(id(statement), id(dialect), keys, many)] = plan
    return plan


def _listened(conn: Connection) -> bool:
    dispatch = conn.dispatch
    return bool(
        dispatch.before_execute
        or dispatch.after_execute
        or dispatch.before_cursor_execute
        or dispatch.after_cursor_execute
        or conn.dialect.dispatch.handle_error
        or conn.dialect.dispatch.do_execute
        or conn.dialect.dispatch.do_executemany
    )


_BEGUN: dict[tuple[bytes, str], bytes] = {}
_BEGUN_MAX = 4096  # distinct (BEGIN, tenant) commands kept; the cache starts again past it


def _begin_command(driver: Any) -> bytes:
    """The ``BEGIN`` psycopg itself would send on ``driver`` for its settings now."""
    import psycopg

    parts = [b"BEGIN"]
    if driver.isolation_level is not None:
        level = psycopg.IsolationLevel(driver.isolation_level).name.replace("_", " ")
        parts.append(b"ISOLATION LEVEL " + level.encode())
    if driver.read_only is not None:
        parts.append(b"READ ONLY" if driver.read_only else b"READ WRITE")
    if driver.deferrable is not None:
        parts.append(b"DEFERRABLE" if driver.deferrable else b"NOT DEFERRABLE")
    return b" ".join(parts)


def begin_with_tenant(conn: Connection, tenant: str) -> bool:
    """Open, on the server, the transaction SQLAlchemy began on ``conn`` (the very ``BEGIN``
    psycopg would have sent before the first statement: the same isolation level, read-only
    and deferrable settings) and set ``ledgerflow.tenant`` to ``tenant`` for it, in one round
    trip instead of two. Returns ``False``, having sent nothing, where that cannot be done:
    another driver, a transaction already open on the server, an autocommit connection, or
    anything listening to the connection's statements (which then sees the setting as its own
    statement, sent by the caller). A database error is raised as :func:`run` raises it, a
    dropped connection invalidated and flagged."""
    if conn.dialect.driver != "psycopg" or _listened(conn):
        return False
    # imported here, not with the module: a program on SQLite never pays for it (a
    # connection of the psycopg dialect has imported it already)
    import psycopg
    from psycopg import pq
    from psycopg.sql import Literal

    driver = conn.connection.driver_connection
    if driver is None or driver.autocommit:
        return False
    pgconn = driver.pgconn
    if pgconn.transaction_status != pq.TransactionStatus.IDLE:
        return False
    start = _begin_command(driver)
    command = _BEGUN.get((start, tenant))
    try:
        if command is None:
            # the tenant as a literal quoted by libpq for this connection's encoding (a
            # tenant PostgreSQL cannot hold fails here, as it would as a parameter)
            literal = Literal(tenant).as_bytes(driver)
            command = start + b"; SELECT set_config('ledgerflow.tenant', " + literal + b", true)"
            if len(_BEGUN) >= _BEGUN_MAX:
                _BEGUN.clear()
            _BEGUN[(start, tenant)] = command
        # PQexec gives the GIL up while it waits; with several statements it runs them in
        # order and stops at the first error, whose result is the one returned
        result = pgconn.exec_(command)
        if result.status != pq.ExecStatus.TUPLES_OK:
            raise psycopg.errors.error_from_result(result, encoding=driver.info.encoding)
    except BaseException as exc:
        sent = (command or start).decode(errors="replace")
        conn._handle_dbapi_exception(exc, sent, (), None, None)
    return True


def run(
    conn: Connection,
    statement: Any,
    params: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
) -> Any:
    """Run ``statement`` (built once, kept for the process's life: a module constant or a
    cached statement, never one built per call) with ``params`` in ``conn``'s transaction;
    a list of parameter sets runs it once for each. Returns :class:`Rows`, or SQLAlchemy's
    own result where the statement went through SQLAlchemy; both read as :class:`Rows`
    does."""
    if conn.dialect.driver != "psycopg" or _listened(conn):
        return conn.execute(statement, params)
    many = isinstance(params, Sequence)
    given: Sequence[Mapping[str, Any]] = params if many else [params or {}]  # type: ignore[list-item,assignment]
    if not given:
        return conn.execute(statement, params)
    keys = tuple(given[0])
    plan = _PLANS.get((id(statement), id(conn.dialect), keys, many))
    if plan is None:
        plan = _plan(conn, statement, keys, many)
    if plan.sql is None:
        return conn.execute(statement, params)
    processors = plan.processors
    bound = []
    for values in given:
        try:
            compiled_params = plan.compiled.construct_params(values, escape_names=False)
        except sa.exc.InvalidRequestError:
            return conn.execute(statement, params)  # SQLAlchemy's own error, as it says it
        for name, process in processors.items():
            compiled_params[name] = process(compiled_params[name])
        bound.append(tuple([compiled_params[name] for name in plan.order]))
    raw = conn.connection.driver_connection
    held = conn.info.get(_CURSOR)
    if held is None or held[0] is not raw:
        import psycopg
        from psycopg.rows import namedtuple_row

        cursor = psycopg.RawCursor(raw, row_factory=namedtuple_row)  # type: ignore[arg-type]
        held = (raw, cursor)
        conn.info[_CURSOR] = held
    cursor = held[1]
    try:
        if many:
            cursor.executemany(plan.sql, bound)
        else:
            cursor.execute(plan.sql, bound[0])
        rows = cursor.fetchall() if cursor.description is not None else []
    except BaseException as exc:
        # what SQLAlchemy does with an error of its own execution (the same exception class,
        # a dropped connection invalidated with every older one of its pool, error hooks),
        # with the cursor kept: it stays this connection's
        conn._handle_dbapi_exception(exc, plan.sql, bound if many else bound[0], None, None)
    return Rows(rows, cursor.rowcount)
