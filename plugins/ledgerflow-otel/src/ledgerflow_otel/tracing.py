"""Spans for an event's path, and the trace context that ties them across processes.

The client opens ``ledgerflow.enqueue <event>`` (a producer span) around
:meth:`~ledgerflow.engine.Engine.enqueue_event` and writes its context into the event's payload
under :data:`TRACE_KEY` (W3C ``traceparent`` / ``tracestate``). The event is committed with it,
so whichever way the worker learns of the event (a broker's wake-up, the outbox, a sweep after a
crash), it reads the same context back from the ledger: ``ledgerflow.process <event>`` (a
consumer span) is the enqueue span's child, and each step's ``ledgerflow.step <step id>`` is
the process span's child. While a step's action runs, its span is the current one, so what the
action itself traces (an HTTP call, say) nests under it.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Mapping
from typing import Any, Final

from ledgerflow.engine import Engine
from ledgerflow.hookspecs import StepInfo, hookimpl
from ledgerflow.model import JSON
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ["TRACE_KEY", "Tracing", "enqueue_event", "extract", "inject"]

TRACE_KEY: Final = "ledgerflow.trace"
"""The payload property holding the trace context (a JSON object of W3C trace-context
headers). An event whose payload schema forbids unknown properties must declare it
(``{"type": "object"}``)."""

_PROPAGATOR = TraceContextTextMapPropagator()
_SCOPE = "ledgerflow_otel"

# spans left open by an event whose processing never reached its outcome (a lost lease, a
# crash of the step runner) are ended after this many newer ones
_MAX_OPEN = 10_000


def inject(
    payload: Mapping[str, JSON] | None = None, *, context: otel_context.Context | None = None
) -> dict[str, JSON]:
    """A copy of ``payload`` carrying the trace context (by default the current one) under
    :data:`TRACE_KEY`; with no active span, the copy carries nothing more.

    Raises :class:`ValueError` if ``payload`` already has a :data:`TRACE_KEY` that is not a
    JSON object of strings: it is ledgerflow-otel's."""
    carried: dict[str, JSON] = dict(payload or {})
    existing = carried.get(TRACE_KEY)
    if existing is not None and not _is_carrier(existing):
        raise ValueError(f"payload[{TRACE_KEY!r}] must be a JSON object of strings")
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=context)
    if carrier:
        carried[TRACE_KEY] = dict(carrier)
    return carried


def extract(payload: Mapping[str, Any]) -> otel_context.Context | None:
    """The trace context :func:`inject` put in ``payload``, or ``None`` when it carries none
    (or one that does not parse: a bad carrier never fails processing)."""
    carrier = payload.get(TRACE_KEY)
    if not _is_carrier(carrier):
        return None
    found = _PROPAGATOR.extract(carrier)
    if not trace.get_current_span(found).get_span_context().is_valid:
        return None
    return found


def _is_carrier(value: object) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )


def enqueue_event(
    engine: Engine,
    execution_id: str,
    event: str,
    *,
    tenant: str,
    payload: Mapping[str, JSON] | None = None,
    tracer_provider: TracerProvider | None = None,
    **options: Any,
) -> str:
    """:meth:`Engine.enqueue_event <ledgerflow.engine.Engine.enqueue_event>` inside a
    ``ledgerflow.enqueue <event>`` producer span (a child of the current span), whose context
    the event carries to the worker; returns the event id. ``options`` (``role``, ``key``)
    are passed on. A refused event (unknown, invalid payload) ends the span as an error and
    raises as ``enqueue_event`` does."""
    tracer = trace.get_tracer(_SCOPE, tracer_provider=tracer_provider)
    with tracer.start_as_current_span(
        f"ledgerflow.enqueue {event}",
        kind=SpanKind.PRODUCER,
        attributes={
            "ledgerflow.execution_id": execution_id,
            "ledgerflow.tenant": tenant,
            "ledgerflow.event": event,
        },
    ) as span:
        event_id = engine.enqueue_event(
            execution_id, event, tenant=tenant, payload=inject(payload), **options
        )
        span.set_attribute("ledgerflow.event_id", event_id)
        return event_id


class Tracing:
    """The plugin: spans for the events a worker decides and the steps it runs, from the
    life-cycle hooks. ``tracer_provider`` defaults to OpenTelemetry's global one (a no-op
    until the application installs an SDK). Spans are kept per event and per step key, so
    steps running on the executor's threads find their event's span."""

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        self._provider = tracer_provider
        self._lock = threading.Lock()
        self._events: dict[str, Span] = {}
        self._steps: dict[str, Span] = {}

    @property
    def tracer(self) -> trace.Tracer:
        """The tracer spans come from (looked up each time: the global provider may be
        installed after the plugin loads)."""
        return trace.get_tracer(_SCOPE, tracer_provider=self._provider)

    # ----------------------------------------------------------------------------------------

    @hookimpl
    def ledgerflow_event_started(
        self,
        execution_id: str,
        tenant: str,
        event_id: str,
        event: str,
        payload: Mapping[str, JSON],
    ) -> None:
        """Open the event's process span, under the enqueue span its payload names."""
        span = self.tracer.start_span(
            f"ledgerflow.process {event}",
            context=extract(payload),
            kind=SpanKind.CONSUMER,
            attributes={
                "ledgerflow.execution_id": execution_id,
                "ledgerflow.tenant": tenant,
                "ledgerflow.event_id": event_id,
                "ledgerflow.event": event,
            },
        )
        self._keep(self._events, event_id, span)

    @hookimpl
    def ledgerflow_event_processed(
        self, event_id: str, status: str, outcome: str, detail: str | None
    ) -> None:
        """Close the event's process span with its status and outcome."""
        span = self._take(self._events, event_id)
        if span is None:
            return
        span.set_attribute("ledgerflow.status", status)
        span.set_attribute("ledgerflow.outcome", outcome)
        if status == "failed":
            span.set_status(Status(StatusCode.ERROR, detail or outcome))
        span.end()

    @hookimpl
    def ledgerflow_step_started(self, step: StepInfo) -> None:
        """Open the step's span under its event's."""
        with self._lock:
            parent = self._events.get(step.event_id)
        name = "compensate" if step.compensation else "step"
        span = self.tracer.start_span(
            f"ledgerflow.{name} {step.step_id}",
            context=trace.set_span_in_context(parent) if parent is not None else None,
            attributes={
                "ledgerflow.execution_id": step.execution_id,
                "ledgerflow.tenant": step.tenant,
                "ledgerflow.event_id": step.event_id,
                "ledgerflow.step_id": step.step_id,
                "ledgerflow.action": step.action,
                "ledgerflow.idempotency_key": step.key,
            },
        )
        self._keep(self._steps, step.key, span)

    @hookimpl(wrapper=True)
    def ledgerflow_run_step(self, step: StepInfo) -> Generator[None, JSON, JSON]:
        """Make the step's span current while its action runs."""
        with self._lock:
            span = self._steps.get(step.key)
        if span is None:
            return (yield)
        # a failed attempt that is tried again is no failed step: step_failed says when it is
        with trace.use_span(
            span, end_on_exit=False, record_exception=False, set_status_on_exception=False
        ):
            return (yield)

    @hookimpl
    def ledgerflow_step_retried(
        self, step: StepInfo, error: str, attempt: int, wait: float
    ) -> None:
        """Note the failed attempt on the step's span."""
        with self._lock:
            span = self._steps.get(step.key)
        if span is not None:
            span.add_event(
                "ledgerflow.retry",
                {"ledgerflow.attempt": attempt, "ledgerflow.error": error, "ledgerflow.wait": wait},
            )

    @hookimpl
    def ledgerflow_step_succeeded(self, step: StepInfo, attempts: int) -> None:
        """Close the step's span."""
        self._end_step(step, attempts=attempts)

    @hookimpl
    def ledgerflow_step_failed(self, step: StepInfo, error: str, attempts: int) -> None:
        """Close the step's span as an error."""
        self._end_step(step, attempts=attempts, error=error)

    @hookimpl
    def ledgerflow_step_compensated(self, step: StepInfo) -> None:
        """Close the compensation's span."""
        self._end_step(step)

    # ----------------------------------------------------------------------------------------

    def _end_step(
        self, step: StepInfo, *, attempts: int | None = None, error: str | None = None
    ) -> None:
        span = self._take(self._steps, step.key)
        if span is None:
            return
        if attempts is not None:
            span.set_attribute("ledgerflow.attempts", attempts)
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()

    def _keep(self, spans: dict[str, Span], key: str, span: Span) -> None:
        with self._lock:
            stale = [spans.pop(key, None)]
            while len(spans) >= _MAX_OPEN:
                stale.append(spans.pop(next(iter(spans))))
            spans[key] = span
        for old in stale:
            if old is not None:  # taken up again after a crash, or never finished
                old.set_status(Status(StatusCode.ERROR, "abandoned: its outcome was not seen"))
                old.end()

    def _take(self, spans: dict[str, Span], key: str) -> Span | None:
        with self._lock:
            return spans.pop(key, None)
