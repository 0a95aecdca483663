"""ledgerflow-otel with the OpenTelemetry SDK's in-memory exporter: a real worker on a real
SQLite file decides events enqueued by the test's thread, and the spans form one trace per
event (enqueue, then process, then each step), the context having travelled in the ledger."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ledgerflow import definitions
from ledgerflow.engine import Engine
from ledgerflow.plugins import Plugins
from ledgerflow.worker import Worker
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from ledgerflow_otel import TRACE_KEY, Tracing, enqueue_event, extract, inject

TENANT = "acme"

WORKFLOW = {
    "name": "Traced",
    "version": 1,
    "initial_state": "open",
    "states": ["open", "done"],
    "terminal_states": ["done"],
    "transitions": [
        {
            "name": "go",
            "from": "open",
            "to": "done",
            "on": "Go",
            "steps": [
                {"id": "first", "action": "t.note", "params": {}},
                {
                    "id": "second",
                    "action": "t.flaky",
                    "params": {},
                    "depends_on": ["first"],
                    "on_error": {
                        "strategy": "retry",
                        "attempts": 2,
                        "backoff": {"initial": 0.01, "multiplier": 1, "maximum": 0.01},
                    },
                },
            ],
        },
        {
            "name": "break",
            "from": "open",
            "to": "done",
            "on": "Break",
            "steps": [{"id": "boom", "action": "t.boom", "params": {}}],
        },
    ],
}


class Recorder:
    """The actions: ``t.note`` records the span current while it runs; ``t.flaky`` fails its
    first attempt per idempotency key."""

    def __init__(self) -> None:
        self.current: list[trace.SpanContext] = []
        self.tried: set[str] = set()
        self.lock = threading.Lock()

    def note(self, params: dict[str, Any], context: Any) -> dict[str, Any]:
        with self.lock:
            self.current.append(trace.get_current_span().get_span_context())
        return {}

    def boom(self, params: dict[str, Any], context: Any) -> dict[str, Any]:
        raise RuntimeError("it broke")

    def flaky(self, params: dict[str, Any], context: Any) -> dict[str, Any]:
        with self.lock:
            first = context.idempotency_key not in self.tried
            self.tried.add(context.idempotency_key)
        if first:
            raise RuntimeError("first attempt fails")
        return {}


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


@pytest.fixture
def traced(tmp_path: Path, provider: TracerProvider) -> Iterator[tuple[Engine, Recorder]]:
    """An engine on a SQLite file with the Traced workflow, whose plugins trace to
    ``provider`` (the entry point's instance, on the global provider, is left out)."""
    engine = Engine(f"sqlite:///{tmp_path}/traced.db", plugins=Plugins(disabled={"otel"}))
    engine.store.upgrade()
    recorder = Recorder()
    engine.registry.register_simple_action("t.note", "Note the current span.", [], recorder.note)
    engine.registry.register_simple_action("t.flaky", "Fail once.", [], recorder.flaky)
    engine.registry.register_simple_action("t.boom", "Always fail.", [], recorder.boom)
    engine.register(definitions.compile_workflow(definitions.parse(WORKFLOW)))
    engine.add_plugin(Tracing(tracer_provider=provider), "otel-test")
    yield engine, recorder
    engine.close()


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def test_one_trace_from_the_client_through_the_ledger_to_each_step(
    traced: tuple[Engine, Recorder], provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    engine, recorder = traced
    tracer = provider.get_tracer("client")
    ids = []
    with tracer.start_as_current_span("client request") as request:
        for _ in range(2):
            x = engine.create_execution("Traced", tenant=TENANT)
            ids.append((x, enqueue_event(engine, x, "Go", tenant=TENANT, tracer_provider=provider)))
    # the worker's threads share no context with this one: only the ledger carries it
    Worker(engine, poll_interval=0.05, concurrency=2).run(until_idle=True)

    spans = exporter.get_finished_spans()
    trace_id = request.get_span_context().trace_id
    enqueues = by_name(spans, "ledgerflow.enqueue Go")
    processes = by_name(spans, "ledgerflow.process Go")
    firsts = by_name(spans, "ledgerflow.step first")
    seconds = by_name(spans, "ledgerflow.step second")
    assert len(enqueues) == len(processes) == len(firsts) == len(seconds) == 2
    assert {s.context.trace_id for s in spans} == {trace_id}

    for (x, event_id), enqueue in zip(ids, enqueues, strict=True):
        assert enqueue.kind is SpanKind.PRODUCER
        assert enqueue.parent is not None
        assert enqueue.parent.span_id == request.get_span_context().span_id
        assert enqueue.attributes is not None
        assert enqueue.attributes["ledgerflow.event_id"] == event_id
        (process,) = [
            p for p in processes if p.attributes and p.attributes["ledgerflow.event_id"] == event_id
        ]
        assert process.kind is SpanKind.CONSUMER
        assert process.parent is not None
        assert process.parent.span_id == enqueue.context.span_id
        assert process.attributes is not None
        assert (
            process.attributes["ledgerflow.status"],
            process.attributes["ledgerflow.outcome"],
        ) == (
            "processed",
            "applied",
        )
        assert process.attributes["ledgerflow.execution_id"] == x
        for step in firsts + seconds:
            assert step.attributes is not None
            if step.attributes["ledgerflow.event_id"] == event_id:
                assert step.parent is not None
                assert step.parent.span_id == process.context.span_id
                assert process.start_time is not None
                assert step.start_time is not None
                assert process.end_time is not None
                assert step.end_time is not None
                assert process.start_time <= step.start_time <= step.end_time <= process.end_time

    # the second step's first attempt failed and was retried: one span, the retry noted on it
    for second in seconds:
        assert second.attributes is not None
        assert second.attributes["ledgerflow.attempts"] == 2
        assert [e.name for e in second.events] == ["ledgerflow.retry"]
        assert second.status.status_code is StatusCode.UNSET
    # while the action ran, its step's span was the current one
    assert sorted(c.span_id for c in recorder.current) == sorted(s.context.span_id for s in firsts)


def test_an_event_enqueued_without_context_starts_its_own_trace(
    traced: tuple[Engine, Recorder], exporter: InMemorySpanExporter
) -> None:
    engine, _ = traced
    x = engine.create_execution("Traced", tenant=TENANT)
    engine.enqueue_event(x, "Go", tenant=TENANT)  # no trace context in the payload
    Worker(engine, poll_interval=0.05).run(until_idle=True)
    spans = exporter.get_finished_spans()
    (process,) = by_name(spans, "ledgerflow.process Go")
    assert process.parent is None
    steps = [s for s in spans if s.name.startswith("ledgerflow.step")]
    assert len(steps) == 2
    assert {s.context.trace_id for s in steps} == {process.context.trace_id}


def test_a_refused_event_ends_its_enqueue_span_as_an_error(
    traced: tuple[Engine, Recorder], provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    engine, _ = traced
    x = engine.create_execution("Traced", tenant=TENANT)
    with pytest.raises(Exception, match="Nope"):
        enqueue_event(engine, x, "Nope", tenant=TENANT, tracer_provider=provider)
    (span,) = exporter.get_finished_spans()
    assert (span.name, span.status.status_code) == ("ledgerflow.enqueue Nope", StatusCode.ERROR)
    assert engine.history(x, tenant=TENANT)[-1].kind != "event_received"  # nothing appended


def test_inject_and_extract_round_trip_and_refuse_a_foreign_key(provider: TracerProvider) -> None:
    assert inject({"a": 1}) == {"a": 1}  # no span, nothing carried
    with provider.get_tracer("t").start_as_current_span("s") as span:
        carried = inject({"a": 1})
    assert carried["a"] == 1
    assert isinstance(carried[TRACE_KEY], dict)
    context = extract(carried)
    assert context is not None
    assert trace.get_current_span(context).get_span_context().span_id == (
        span.get_span_context().span_id
    )
    for bad in ({TRACE_KEY: "x"}, {TRACE_KEY: {"traceparent": "garbage"}}, {}):
        assert extract(bad) is None
    with pytest.raises(ValueError, match=r"ledgerflow\.trace"):
        inject({TRACE_KEY: ["not", "an", "object"]})


def test_the_entry_point_registers_the_plugin() -> None:
    plugins = Plugins()
    (info,) = [i for i in plugins.describe() if i.name == "otel"]
    assert (info.source, info.distribution) == ("entry point", "ledgerflow-otel")
    assert {"ledgerflow_event_started", "ledgerflow_step_started", "ledgerflow_run_step"} <= set(
        info.hooks
    )
    assert info.errors == ()


def test_a_failed_step_and_its_event_are_error_spans(
    traced: tuple[Engine, Recorder], provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    engine, _ = traced
    x = engine.create_execution("Traced", tenant=TENANT)
    enqueue_event(engine, x, "Break", tenant=TENANT, tracer_provider=provider)
    Worker(engine, poll_interval=0.05).run(until_idle=True)
    spans = exporter.get_finished_spans()
    (step,) = by_name(spans, "ledgerflow.step boom")
    (process,) = by_name(spans, "ledgerflow.process Break")
    assert step.status.status_code is StatusCode.ERROR
    assert "it broke" in (step.status.description or "")
    assert process.status.status_code is StatusCode.ERROR
    assert process.attributes is not None
    assert process.attributes["ledgerflow.status"] == "failed"
    assert step.parent is not None
    assert step.parent.span_id == process.context.span_id
