"""The tracing seam: nothing while off; with a recorder, spans nest and errors say only
their type."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from app.observability import tracing
from app.observability.otel import _Recorder


@pytest.fixture
def recorded() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(_Recorder(provider.get_tracer("test")))
    background = tracing.decided(None)  # outside requests, as the lifespan's own work
    yield exporter
    tracing.reset(background)
    tracing.install(None)


def test_off_every_call_is_a_no_op() -> None:
    with tracing.span("anything", key="value") as span:
        tracing.annotate(more="attributes")
    assert span is tracing.NO_SPAN  # one shared object: nothing built per call
    assert tracing.span("another") is tracing.NO_SPAN


async def test_a_traced_call_is_the_call_itself_while_off() -> None:
    async def work() -> str:
        return "cache"

    call = work()
    assert tracing.traced("broker.token", call, lambda _: {}) is call  # no wrapper, no span
    assert await call == "cache"


async def test_a_traced_call_is_a_span_with_its_outcome(recorded: InMemorySpanExporter) -> None:
    async def work() -> str:
        return "cache"

    source = await tracing.traced(
        "broker.token",
        work(),
        lambda found: {"broker.token.source": found},
        {"broker.token.requested_ttl": 900},
    )
    assert source == "cache"
    (span,) = recorded.get_finished_spans()
    assert span.name == "broker.token"
    assert dict(span.attributes or {}) == {
        "broker.token.requested_ttl": 900,
        "broker.token.source": "cache",
    }


def test_spans_nest_and_carry_their_attributes(recorded: InMemorySpanExporter) -> None:
    with tracing.span("outer", **{"broker.a": 1}):
        with tracing.span("inner"):
            tracing.annotate(**{"broker.token.source": "cache"})
        tracing.annotate(**{"broker.b": True})
    inner, outer = recorded.get_finished_spans()
    assert inner.parent is not None
    assert inner.parent.span_id == outer.context.span_id
    assert dict(inner.attributes or {}) == {"broker.token.source": "cache"}
    assert dict(outer.attributes or {}) == {"broker.a": 1, "broker.b": True}


def test_an_error_is_recorded_by_its_type_never_its_message(
    recorded: InMemorySpanExporter,
) -> None:
    secret = "sk-must-not-be-exported-0123"
    with pytest.raises(ValueError, match="sk-"), tracing.span("failing"):
        raise ValueError(f"bad key {secret}")
    (span,) = recorded.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description is None
    assert dict(span.attributes or {}) == {"error.type": "ValueError"}
    assert span.events == ()  # no exception event, with its message and traceback


def test_a_trace_the_sampler_dropped_builds_no_children_but_roots_still_start() -> None:
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased

    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(ALWAYS_OFF))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    tracing.install(_Recorder(tracer))
    background = tracing.decided(None)  # outside requests, as the lifespan's own work
    try:
        with tracer.start_as_current_span("request (not sampled)"):
            child = tracing.span("broker.token")
            assert child is tracing.NO_SPAN  # nothing built for a dropped trace
        root_provider = TracerProvider(sampler=ParentBased(ALWAYS_ON))
        root_provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracing.install(_Recorder(root_provider.get_tracer("test")))
        with tracing.span("identity_provider fetch_keys"):  # no request around it: a root
            pass
    finally:
        tracing.reset(background)
        tracing.install(None)
    assert [span.name for span in exporter.get_finished_spans()] == ["identity_provider fetch_keys"]


def test_spans_are_recorded_only_where_something_said_so(recorded: InMemorySpanExporter) -> None:
    """A context nobody marked (a server's request context before the middleware decides,
    a dropped request's) records nothing; the lifespan's own work, marked, does."""
    with tracing.span("background"):
        pass
    unmarked = contextvars.Context()
    assert unmarked.run(tracing.request_sampled) is False
    assert unmarked.run(tracing.span, "unmarked") is tracing.NO_SPAN
    assert [span.name for span in recorded.get_finished_spans()] == ["background"]
