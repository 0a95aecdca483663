"""Transports: how workers learn that there is work.

Every event is committed together with its outbox row, and workers claim work from the outbox
(``FOR UPDATE SKIP LOCKED`` on PostgreSQL), so a transport only ever carries wake-ups: losing
one delays an event until the worker's next poll or sweep, and never loses it. A transport is
registered under a URL scheme by a plugin (hook ``ledgerflow_register_transports``). The
``database`` transport is built in: on PostgreSQL it wakes workers with ``LISTEN``/``NOTIFY``
(the notification is sent in the event's own transaction); on SQLite it brings no wake-ups and
workers poll.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ledgerflow.store.sql import NOTIFY_CHANNEL

if TYPE_CHECKING:
    from ledgerflow.engine import Engine

__all__ = ["DatabaseTransport", "Transport"]

log = logging.getLogger("ledgerflow.transports")


@runtime_checkable
class Transport(Protocol):
    """Carries wake-ups to a worker."""

    def listen(self, wake: Callable[[], None], stopping: threading.Event) -> None:
        """Call ``wake`` whenever work may have arrived, until ``stopping`` is set; on trouble,
        log it and keep trying (the worker polls meanwhile). Runs on a thread of its own."""
        ...

    def close(self) -> None:
        """Release the transport's connections."""
        ...


class DatabaseTransport:
    """Wake-ups from the store itself: PostgreSQL ``NOTIFY`` on the channel
    ``ledgerflow_wakeup``; none on SQLite (workers poll)."""

    def __init__(self, url: str, engine: Engine, *, retry_interval: float = 2.0) -> None:
        self.engine = engine
        self.retry_interval = retry_interval

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
