"""ledgerflow-otel: OpenTelemetry spans for ledgerflow.

Installed, its entry point (plugin ``otel``) traces every event a worker decides
(``ledgerflow.process <event>``) and every step it runs (``ledgerflow.step <step id>``) on
OpenTelemetry's global tracer provider. A client that enqueues through :func:`enqueue_event`
(or puts :func:`inject`'s payload in ``enqueue_event`` itself) links the worker's spans to its
own trace: the context travels in the event.
"""

from __future__ import annotations

from ledgerflow_otel.tracing import TRACE_KEY, Tracing, enqueue_event, extract, inject

__all__ = ["TRACE_KEY", "Tracing", "enqueue_event", "extract", "inject"]
