"""Transports: how workers learn that there is work.

Every event is committed together with its outbox row, so the ledger's database always knows
what is left to do; a transport only carries **wake-ups**. Losing one delays an event until an
outbox relay publishes it again or a worker's periodic sweep finds it, and never loses it.

Two kinds of transport:

- a **polling** transport (the built-in ``database`` one) brings wake-ups to idle threads through
  :meth:`Transport.listen`; the worker then claims work from the outbox itself (``FOR UPDATE
  SKIP LOCKED`` on PostgreSQL). On PostgreSQL its wake-ups are ``NOTIFY`` messages sent in the
  event's own transaction; on SQLite there are none and workers poll.
- a **broker** transport (:class:`BrokerTransport`, e.g. Redis Streams from
  ``ledgerflow-redis``) hands each worker the wake-ups it is to act on: the worker receives a
  batch, takes each execution's lease, processes it, and acknowledges the messages once the
  outcome is committed. A message that does not parse, or that keeps failing, goes to the
  transport's dead letters and is recorded in the database, never dropped.

A transport is registered under a URL scheme by a plugin (hook
``ledgerflow_register_transports``) and chosen with ``--broker URL`` (``LEDGERFLOW_BROKER``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import attrs

from ledgerflow.store.sql import NOTIFY_CHANNEL

if TYPE_CHECKING:
    from ledgerflow.engine import Engine

__all__ = ["BrokerTransport", "DatabaseTransport", "Delivery", "Transport", "Wakeup"]

log = logging.getLogger("ledgerflow.transports")


@attrs.frozen(kw_only=True)
class Wakeup:
    """The message a transport carries: event ``event_id`` of execution ``execution_id`` (of
    ``tenant``) was committed and may need processing."""

    execution_id: str
    tenant: str
    event_id: str


@attrs.frozen(kw_only=True)
class Delivery:
    """One message as a broker handed it to a consumer.

    ``id`` is the broker's own id for it (what :meth:`BrokerTransport.ack` needs); ``wakeup`` is
    the parsed message, or ``None`` if it does not parse, with ``problem`` saying why;
    ``deliveries`` counts how many times it has been handed out, this time included; ``body``
    is the raw message, kept for the dead letters.
    """

    id: str
    wakeup: Wakeup | None
    deliveries: int = 1
    problem: str | None = None
    body: dict[str, str] = attrs.field(factory=dict)


@runtime_checkable
class Transport(Protocol):
    """Carries wake-ups from the processes that commit events to the workers."""

    def publish(self, wakeups: Sequence[Wakeup]) -> None:
        """Send ``wakeups`` now (the fast path, right after their events committed); raise if
        they could not be sent: the caller logs it and the outbox relay sends them later."""
        ...

    def listen(self, wake: Callable[[], None], stopping: threading.Event) -> None:
        """Call ``wake`` whenever work may have arrived, until ``stopping`` is set; on trouble,
        log it and keep trying (the worker polls meanwhile). Runs on a thread of its own; a
        broker transport, whose :meth:`BrokerTransport.receive` blocks, returns at once."""
        ...

    def close(self) -> None:
        """Release the transport's connections."""
        ...


@runtime_checkable
class BrokerTransport(Transport, Protocol):
    """A transport whose messages drive the workers (a consumer group of a message broker)."""

    max_deliveries: int
    """How many times a message may be handed out before it goes to the dead letters."""

    def receive(self, consumer: str, *, count: int, block: float) -> list[Delivery]:
        """Up to ``count`` messages for ``consumer`` (a worker's id), waiting up to ``block``
        seconds for the first: new ones, and ones another consumer received but did not
        acknowledge for longer than the transport's claim timeout (a dead worker's). Raises if
        the broker cannot be reached; the worker backs off and tries again."""
        ...

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge ``deliveries``: they were acted on (their events' outcomes are committed,
        or another worker holds their executions) and are not to be handed out again."""
        ...

    def dead_letter(self, delivery: Delivery, reason: str) -> str:
        """Move ``delivery`` to the dead letters with ``reason`` and acknowledge it; returns its
        id among the dead letters."""
        ...


class DatabaseTransport:
    """Wake-ups from the store itself: the outbox row committed with each event is the message;
    PostgreSQL ``NOTIFY`` on the channel ``ledgerflow_wakeup`` wakes idle workers at once, and
    SQLite workers poll."""

    def __init__(self, url: str, engine: Engine, *, retry_interval: float = 2.0) -> None:
        self.engine = engine
        self.retry_interval = retry_interval

    def publish(self, wakeups: Sequence[Wakeup]) -> None:
        """Nothing to send: the outbox row, and on PostgreSQL the ``NOTIFY``, were committed
        with the event."""

    def listen(self, wake: Callable[[], None], stopping: threading.Event) -> None:
        """Wake the worker on each notification; reconnect after any failure."""
        store = self.engine.store
        if store.dialect != "postgresql":
            return
        import psycopg

        url = store.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        while not stopping.is_set():
            try:
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    while not stopping.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            wake()
            except psycopg.Error as exc:
                log.warning("LISTEN failed, the worker polls meanwhile: %s", exc)
                stopping.wait(self.retry_interval)

    def close(self) -> None:
        """Nothing to release: each ``listen`` owns its connection."""
