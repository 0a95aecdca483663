"""What ledgerflow is working on, for its log lines: execution, event, tenant and step.

The worker binds the execution and tenant it processes, the engine the event it decides, and
ledgerflow's own step runner the step it runs; each binding lives in a :mod:`contextvars`
variable, so it belongs to the thread (or task) doing the work and follows a step into the
executor's thread pool, which runs each step in a copy of the caller's context.

:func:`configure` sets up the root logger: ``text`` (the default, one human line) or ``json``
(one JSON object per line, with ``execution_id``, ``event_id``, ``tenant`` and ``step_id``
wherever they are known), which log shippers can index without parsing prose.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import json
import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any, Final, Literal, TextIO

__all__ = [
    "FIELDS",
    "LOG_FORMATS",
    "ContextFilter",
    "JsonFormatter",
    "begin_event",
    "bound",
    "configure",
    "current",
    "event_started",
]

FIELDS: Final = ("execution_id", "event_id", "tenant", "step_id")
"""The fields a log line carries when known, in the order JSON lines show them."""

LOG_FORMATS: Final = ("text", "json")
"""The formats :func:`configure` accepts."""

LogFormat = Literal["text", "json"]

_FIELDS: dict[str, contextvars.ContextVar[str | None]] = {
    name: contextvars.ContextVar(f"ledgerflow_log_{name}", default=None) for name in FIELDS
}
# when the event being decided was taken up (time.monotonic()) and appended (store clock)
_EVENT_STARTED: contextvars.ContextVar[tuple[float, float] | None] = contextvars.ContextVar(
    "ledgerflow_event_started", default=None
)


def current() -> dict[str, str]:
    """The fields bound around the caller, by name; unknown ones are left out."""
    found = {}
    for name, var in _FIELDS.items():
        value = var.get()
        if value is not None:
            found[name] = value
    return found


@contextlib.contextmanager
def bound(**fields: str | None) -> Iterator[None]:
    """Within the block, log lines of this thread (or task) carry ``fields`` (names from
    :data:`FIELDS`; ``None`` unbinds one); on leaving, the previous values come back.

    Raises :class:`ValueError` for a name not in :data:`FIELDS`.
    """
    if not fields.keys() <= _FIELDS.keys():
        unknown = sorted(set(fields) - set(FIELDS))
        raise ValueError(f"unknown log field(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}")
    tokens = [(_FIELDS[name], _FIELDS[name].set(value)) for name, value in fields.items()]
    # an event taken up inside the block (begin_event) ends with it
    event_id = _FIELDS["event_id"].set(_FIELDS["event_id"].get())
    started = _EVENT_STARTED.set(_EVENT_STARTED.get())
    try:
        yield
    finally:
        _EVENT_STARTED.reset(started)
        _FIELDS["event_id"].reset(event_id)
        for var, token in reversed(tokens):
            var.reset(token)


def begin_event(event_id: str, *, enqueued_at: float | None = None) -> None:
    """Say that the caller now decides event ``event_id`` (appended at ``enqueued_at``, in the
    store's clock): log lines carry its id until the enclosing :func:`bound` block ends, and
    :func:`event_started` tells observers when it was taken up. The engine calls this as it
    takes up each event; the worker's :func:`bound` around the execution undoes it."""
    _FIELDS["event_id"].set(event_id)
    _EVENT_STARTED.set((time.monotonic(), enqueued_at if enqueued_at is not None else time.time()))


def event_started() -> tuple[float, float] | None:
    """For the event the caller is deciding (see :func:`begin_event`): ``(taken up, as
    time.monotonic(); appended, in the store's clock)``, or ``None`` outside of one."""
    return _EVENT_STARTED.get()


class ContextFilter(logging.Filter):
    """Copies the bound fields onto each record it sees (``record.ledgerflow``, a dict), in
    the thread that logged it, so a formatter anywhere can show them."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Attach the fields; never drops a record."""
        if not hasattr(record, "ledgerflow"):
            record.ledgerflow = current()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (ISO 8601, UTC), ``level``, ``logger``,
    ``message``, then whichever of :data:`FIELDS` are known, then ``exception`` (the
    traceback as text) if the record has one. Values a record's ``extra`` adds under
    ``ledgerflow`` are merged in too."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON, never spanning lines."""
        line: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "ledgerflow", None)
        if fields is None:
            fields = current()
        if isinstance(fields, Mapping):
            line.update({k: v for k, v in fields.items() if v is not None})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, default=str, ensure_ascii=False)


_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(
    log_format: str = "text", *, level: int = logging.WARNING
) -> logging.StreamHandler[TextIO]:
    """Send the process's log lines to standard error in ``log_format`` (``text`` or
    ``json``) at ``level`` and above, replacing handlers an earlier call installed (calling it
    twice does not print each line twice). Returns the handler installed.

    Raises :class:`ValueError` for a format not in :data:`LOG_FORMATS`.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"unknown log format {log_format!r}; choose one of: text, json")
    handler: logging.StreamHandler[TextIO] = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(_TEXT))
    handler.set_name("ledgerflow")
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == "ledgerflow":
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
