"""Circuit breakers: stop calling an action that keeps failing, for every worker at once.

A breaker is opt-in, per action: register the action with a :class:`BreakerPolicy`. Its state
lives in the store (table ``lf_circuit_breakers``), so every worker process on the database
sees the same circuit:

- **closed**: calls go ahead. Each failure counts; a success zeroes the count. At
  ``policy.failures`` consecutive failures (across all workers, in the order the database
  records them) the circuit opens.
- **open**: calls are refused with :class:`~ledgerflow.errors.CircuitOpenError` until
  ``policy.reset_after`` seconds have passed since it opened.
- **half-open**: after that, exactly one caller, across all processes, is admitted as the trial
  call; everyone else is still refused. The trial's success closes the circuit; its failure
  opens it again from that moment. A trial that never reports back (its worker died) is
  replaced: ``reset_after`` seconds after it was admitted, the next caller becomes the trial.

What it promises, and what it does not: the open / trial decisions are atomic in the database
(one conditional ``UPDATE`` or one upsert per decision, never a read followed by a write that
trusts it), so two workers never both win one trial. It does not stop calls that were admitted
before the circuit opened; their results still count when they report back (a success then
closes the circuit: the action evidently works again).

Hot path: :meth:`CircuitBreakers.admit` and :meth:`CircuitBreakers.success` on a closed circuit
with no failures read one row by primary key and write nothing. There is deliberately no
in-process cache of "known closed": another process may count a failure or open the circuit at
any moment, and a success that skipped its write on a stale note would leave that failure
counted, so consecutive failures would no longer be consecutive. The one read is what keeps the
count right across processes, and it never waits for a writer: SQLite in WAL mode and
PostgreSQL both let it read the last committed row while another worker writes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias

import attrs
import sqlalchemy as sa

from ledgerflow.errors import (
    ActionRegistrationError,
    CircuitOpenError,
    InvalidInputError,
    StoreUnavailableError,
    first_line,
)

if TYPE_CHECKING:
    from ledgerflow.store.sql import SQLStore

__all__ = [
    "BreakerPolicy",
    "BreakerState",
    "CircuitBreakers",
    "CircuitState",
    "WhenOpen",
]

log = logging.getLogger("ledgerflow.breakers")

WhenOpen: TypeAlias = Literal["fail", "delay"]
"""What a refused call does: ``fail`` at once, or ``delay`` (the event is held back and tried
again once a trial may be admitted)."""

CircuitState: TypeAlias = Literal["closed", "open", "half_open"]
"""The state of a circuit: ``closed`` (calls go ahead), ``open`` (calls are refused),
``half_open`` (one trial call admitted, the others refused)."""

_WHEN_OPEN: Final = ("fail", "delay")
_MAX_ACTION = 200  # the width of lf_circuit_breakers.action
_MAX_ERROR = 2000  # last_error is for people to read, not a log: keep rows small


def _check_failures(_: Any, __: Any, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ActionRegistrationError(
            f"breaker policy: failures must be a whole number of at least 1 (the consecutive "
            f"failures that open the circuit), not {value!r}"
        )


def _seconds(value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ActionRegistrationError(
            f"breaker policy: reset_after must be a finite number of seconds greater than 0 "
            f"(how long the circuit stays open before a trial call), not {value!r}"
        )
    return float(value)


def _check_when_open(_: Any, __: Any, value: object) -> None:
    if value not in _WHEN_OPEN:
        raise ActionRegistrationError(
            f"breaker policy: when_open must be 'fail' or 'delay', not {value!r}"
        )


@attrs.frozen(kw_only=True)
class BreakerPolicy:
    """How an action's circuit breaker behaves.

    ``failures`` consecutive failures (a whole number, at least 1) open the circuit; it stays
    open ``reset_after`` seconds (finite, greater than 0) before one trial call is admitted.
    ``when_open`` says what a refused call does: ``"fail"`` — it fails at once with
    :class:`~ledgerflow.errors.CircuitOpenError`; ``"delay"`` — the executor holds the event back
    and tries again after the error's ``retry_after``.

    Raises :class:`~ledgerflow.errors.ActionRegistrationError` naming the bad field and what it
    accepts.
    """

    failures: int = attrs.field(default=5, validator=_check_failures)
    reset_after: float = attrs.field(default=30.0, converter=_seconds)
    when_open: WhenOpen = attrs.field(default="fail", validator=_check_when_open)

    def describe(self) -> dict[str, Any]:
        """The policy as plain JSON values: ``failures``, ``reset_after``, ``when_open``."""
        return {
            "failures": self.failures,
            "reset_after": self.reset_after,
            "when_open": self.when_open,
        }


@attrs.frozen(kw_only=True)
class BreakerState:
    """The stored state of one action's circuit, as a status command shows it.

    ``failures`` counts consecutive failures (it keeps counting while the circuit is open).
    ``opened_at`` is when the circuit opened or, half-open, when its trial call was admitted:
    ``reset_after`` counts from it; ``None`` while closed. ``last_error`` is the last failure
    recorded, kept after the circuit closes. ``updated_at`` is the last change, ``None`` for an
    action whose breaker never recorded anything (it is closed).
    """

    action: str
    state: CircuitState
    failures: int
    opened_at: float | None
    last_error: str | None
    updated_at: float | None

    @classmethod
    def from_row(cls, row: Any) -> BreakerState:
        """The state a ``lf_circuit_breakers`` row holds."""
        return cls(
            action=row.action,
            state=row.state,
            failures=int(row.failures),
            opened_at=row.opened_at,
            last_error=row.last_error,
            updated_at=row.updated_at,
        )

    @classmethod
    def never_failed(cls, action: str) -> BreakerState:
        """The state of an action whose breaker has recorded nothing: closed, no failures."""
        return cls(
            action=action,
            state="closed",
            failures=0,
            opened_at=None,
            last_error=None,
            updated_at=None,
        )


class CircuitBreakers:
    """Every action's circuit breaker, its state shared with every worker through ``store``.

    One instance serves any number of threads; any number of instances, in any number of
    processes on the same database, share the same circuits. ``clock`` gives the time in
    seconds since the epoch; the times it returns are compared with those other workers wrote,
    so all workers need clocks that roughly agree (as leases already do).

    Every method raises :class:`~ledgerflow.errors.StoreUnavailableError` when the database
    fails, and :class:`~ledgerflow.errors.InvalidInputError` for an action name that cannot be
    one (empty, not a string, longer than 200 characters).
    """

    def __init__(self, store: SQLStore, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    def __repr__(self) -> str:
        return f"CircuitBreakers({self.store!r})"

    def admit(self, action: str, policy: BreakerPolicy) -> None:
        """Return if a call of ``action`` may go ahead now; raise
        :class:`~ledgerflow.errors.CircuitOpenError` if its circuit refuses it.

        Closed: the call goes ahead (one read, no write). Open for ``policy.reset_after``
        seconds or more, or half-open with a trial admitted that long ago: exactly one caller,
        across all processes, is admitted as the trial; the others are refused. Otherwise
        refused, with ``retry_after`` the seconds until a trial may be admitted.
        """
        _check_action(action)
        now = self.clock()
        cutoff = now - policy.reset_after
        with self._store_errors(action, "admitting a call"):
            with self.store.read() as conn:
                row = self.store.breaker_row(conn, action)
            if row is None or row.state == "closed":
                return
            if row.opened_at is not None and row.opened_at > cutoff:
                raise _refused(row, policy, now)
            with self.store.write() as conn:
                if self.store.take_breaker_trial(conn, action, cutoff=cutoff, now=now):
                    log.info("circuit of action %s: half-open, one trial call admitted", action)
                    return
                # another caller won the trial, or the circuit closed meanwhile
                row = self.store.breaker_row(conn, action)
        if row is None or row.state == "closed":
            return
        raise _refused(row, policy, now)

    def success(self, action: str, policy: BreakerPolicy) -> None:
        """Record that a call of ``action`` succeeded: close its circuit and zero its failures.

        Writes only when there is something to change: on a circuit already closed with no
        failures it reads one row and writes nothing. A success closes an open circuit too (a
        call admitted before it opened has shown the action works). ``policy`` is not needed to
        close a circuit; it is taken so that the three calls read alike.
        """
        _check_action(action)
        with self._store_errors(action, "recording a success"):
            with self.store.read() as conn:
                row = self.store.breaker_row(conn, action)
            if row is None or (row.state == "closed" and row.failures == 0):
                return
            with self.store.write() as conn:
                closed = self.store.close_breaker(conn, action, now=self.clock())
        if closed and row.state != "closed":
            log.info("circuit of action %s: closed after a successful call", action)

    def failure(self, action: str, policy: BreakerPolicy, error: str) -> None:
        """Record that a call of ``action`` failed with ``error`` (a one-line description).

        Counts one more consecutive failure atomically; at ``policy.failures`` the circuit
        opens, and a failed half-open trial opens it again from now. ``error`` is kept as the
        last error (its first 2,000 characters).
        """
        _check_action(action)
        now = self.clock()
        # a NUL cannot be stored in PostgreSQL text: show it instead
        text = str(error).replace("\x00", "\\x00")[:_MAX_ERROR]
        with self._store_errors(action, "recording a failure"), self.store.write() as conn:
            row = self.store.count_breaker_failure(
                conn, action, threshold=policy.failures, error=text, now=now
            )
        if row.state == "open" and row.opened_at == now:
            log.warning(
                "circuit of action %s: open for %.1f s after %d consecutive failure(s); "
                "last error: %s",
                action,
                policy.reset_after,
                row.failures,
                text,
            )

    def state(self, action: str) -> BreakerState:
        """The circuit state of ``action``; closed with no failures if nothing was recorded."""
        _check_action(action)
        with self._store_errors(action, "reading the state"), self.store.read() as conn:
            row = self.store.breaker_row(conn, action)
        return BreakerState.never_failed(action) if row is None else BreakerState.from_row(row)

    def states(self) -> list[BreakerState]:
        """The state of every circuit that has recorded something, by action name."""
        with self._store_errors(None, "reading the states"), self.store.read() as conn:
            rows = self.store.breaker_rows(conn)
        return [BreakerState.from_row(row) for row in rows]

    def reset(self, action: str) -> None:
        """Close the circuit of ``action`` by hand and zero its failures (an operator's
        override); the last error is kept. Nothing changes for a circuit already closed."""
        _check_action(action)
        with self._store_errors(action, "resetting"), self.store.write() as conn:
            closed = self.store.close_breaker(conn, action, now=self.clock())
        if closed:
            log.info("circuit of action %s: reset by hand", action)

    @contextlib.contextmanager
    def _store_errors(self, action: str | None, doing: str) -> Iterator[None]:
        try:
            yield
        except sa.exc.SQLAlchemyError as exc:
            whose = "circuit breakers" if action is None else f"circuit breaker of {action!r}"
            cause = first_line(exc)
            message = f"{whose}: {doing} failed: {cause}"
            if "lf_circuit_breakers" in cause:  # the table is missing: an old schema
                message += "; is the schema up to date? run `ledgerflow db upgrade`"
            raise StoreUnavailableError(message) from exc


def _check_action(action: object) -> None:
    if not isinstance(action, str) or not action or len(action) > _MAX_ACTION:
        raise InvalidInputError(
            f"a circuit breaker needs an action name of 1 to {_MAX_ACTION} characters, "
            f"not {action!r}"
        )


def _refused(row: Any, policy: BreakerPolicy, now: float) -> CircuitOpenError:
    opened_at = row.opened_at if row.opened_at is not None else now
    return CircuitOpenError(
        row.action,
        retry_after=opened_at + policy.reset_after - now,
        when_open=policy.when_open,
        last_error=row.last_error,
    )
