"""The entry point's plugin (``otel``): one :class:`~ledgerflow_otel.tracing.Tracing` on
OpenTelemetry's global tracer provider, so installing the distribution and an SDK is all it
takes. Turn it off with ``LEDGERFLOW_DISABLE_PLUGINS=otel``."""

from __future__ import annotations

from ledgerflow_otel.tracing import Tracing

__all__ = ["tracing"]

tracing = Tracing()
"""The plugin registered by the entry point ``otel``."""
