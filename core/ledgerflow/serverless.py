"""Running ledgerflow without a long-lived worker: a function trigger or a cron job.

:func:`handler` processes the wake-ups it is given and returns. Deploy it as a function whose
trigger delivers batches of wake-ups (a queue subscription, a stream consumer), or run it from
a scheduler with no wake-ups, which makes it sweep for undecided events instead. Each
invocation takes every execution's lease like a worker does, so invocations running at the
same time, and long-lived workers beside them, never process one execution at once.

Configuration comes from the environment: ``LEDGERFLOW_DB`` (the store), ``LEDGERFLOW_APP``
(the module whose ``setup(engine)`` registers actions and definitions), ``LEDGERFLOW_BROKER``.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Mapping
from typing import Any

from ledgerflow.engine import DEFAULT_DB, Engine
from ledgerflow.errors import InvalidInputError
from ledgerflow.transports import Wakeup
from ledgerflow.worker import Worker

__all__ = ["handler", "parse_wakeups"]

_engine: Engine | None = None
_lock = threading.Lock()


def _shared_engine() -> Engine:
    """One engine per process, kept warm between invocations."""
    global _engine
    with _lock:
        if _engine is None:
            engine = Engine(os.environ.get("LEDGERFLOW_DB", DEFAULT_DB))
            engine.store.check_schema()
            app = os.environ.get("LEDGERFLOW_APP")
            if app:
                module = importlib.import_module(app)
                engine.add_plugin(module, app, source="app")
                setup = getattr(module, "setup", None)
                if callable(setup):
                    setup(engine)
            _engine = engine
        return _engine


def parse_wakeups(event: Mapping[str, Any] | None) -> list[Wakeup]:
    """The wake-ups in a trigger's ``event``: ``{"wakeups": [{"execution_id", "tenant",
    "event_id"}, ...]}`` (``event_id`` optional). ``None`` or no ``wakeups`` key: none.

    Raises :class:`~ledgerflow.errors.InvalidInputError` naming the first bad entry.
    """
    if event is None:
        return []
    if not isinstance(event, Mapping):
        raise InvalidInputError("the trigger's event must be a JSON object")
    entries = event.get("wakeups", [])
    if not isinstance(entries, list):
        raise InvalidInputError("wakeups must be a list")
    wakeups = []
    for n, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise InvalidInputError(f"wakeups[{n}] must be an object")
        execution_id, tenant = entry.get("execution_id"), entry.get("tenant")
        event_id = entry.get("event_id", "")
        if not isinstance(execution_id, str) or not execution_id:
            raise InvalidInputError(f"wakeups[{n}].execution_id must be a non-empty string")
        if not isinstance(tenant, str) or not tenant:
            raise InvalidInputError(f"wakeups[{n}].tenant must be a non-empty string")
        if not isinstance(event_id, str):
            raise InvalidInputError(f"wakeups[{n}].event_id must be a string")
        wakeups.append(Wakeup(execution_id=execution_id, tenant=tenant, event_id=event_id))
    return wakeups


def handler(event: Mapping[str, Any] | None = None, context: Any = None) -> dict[str, Any]:
    """Process the wake-ups of ``event`` (see :func:`parse_wakeups`), or sweep when there
    are none, and return ``{"processed_events", "executions", "left"}``: ``left`` lists the
    executions another worker holds or that failed here, which are processed later."""
    engine = _shared_engine()
    worker = Worker(engine, lease_ttl=float(os.environ.get("LEDGERFLOW_LEASE_TTL", "30")))
    left = worker.handle(parse_wakeups(event))
    return {
        "processed_events": worker.stats.events,
        "executions": worker.stats.executions,
        "left": left,
    }
