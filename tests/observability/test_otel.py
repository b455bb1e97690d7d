"""What `BROKER_OTEL=on` sets up: the export wrapper, who may continue a trace, how a request
is decided and what a kept one records."""

from __future__ import annotations

import asyncio
import contextvars
import math
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Sampler
from opentelemetry.trace import SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import Message, Receive, Scope, Send

from app.observability import otel, tracing
from app.observability.otel import (
    Tracing,
    TracingMiddleware,
    _Decided,
    _OncePerIncident,
    _Recorder,
)
from tests.fakes.span_shipper import MemoryShipper


def test_failures_are_logged_once_per_incident_and_the_recovery_once() -> None:
    report = _OncePerIncident("collector.internal")
    outcomes = [True, False, False, False, True, True, False]
    with structlog.testing.capture_logs() as logs:
        for sent in outcomes:
            report(sent, 512, "why")
    assert [entry["event"] for entry in logs] == [
        "trace_export_failed",
        "trace_export_recovered",
        "trace_export_failed",
    ]
    assert logs[0]["collector"] == "collector.internal"
    assert logs[0]["reason"] == "why"
    assert logs[0]["spans_dropped"] == 512


@pytest.mark.parametrize(
    ("trusted", "peer", "continues"),
    [
        (["127.0.0.1"], "127.0.0.1", True),
        (["10.0.0.0/8"], "10.1.2.3", True),
        (["10.0.0.0/8"], "192.168.1.1", False),
        ([], "127.0.0.1", False),
        (["10.0.0.0/8"], "not-an-address", False),
    ],
)
def test_only_a_trusted_proxy_may_continue_a_trace(
    trusted: list[str], peer: str, continues: bool
) -> None:
    setup = Tracing(trusted)
    try:
        assert setup.trusts({"type": "http", "client": (peer, 5000)}) is continues
        assert not setup.trusts({"type": "http", "client": None})
    finally:
        setup.provider.shutdown()


@pytest.mark.parametrize(
    ("sampler", "arg", "share"),
    [
        ("parentbased_traceidratio", "0.25", 0.25),
        ("parentbased_traceidratio", "0.01", 0.01),
        ("traceidratio", "0.25", 0.25),
        ("parentbased_traceidratio", "0", 0.0),
        ("parentbased_traceidratio", "1", 1.0),
        ("always_on", None, 1.0),
        ("always_off", None, 0.0),
        ("parentbased_always_off", None, 0.0),
        (None, None, 1.0),  # the SDK's default: parentbased_always_on
    ],
)
def test_a_new_trace_is_kept_as_often_as_the_configured_sampler_says(
    monkeypatch: pytest.MonkeyPatch, sampler: str | None, arg: str | None, share: float
) -> None:
    for name, value in (("OTEL_TRACES_SAMPLER", sampler), ("OTEL_TRACES_SAMPLER_ARG", arg)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    setup = Tracing([])
    try:
        kept = sum(setup.sampled(None) for _ in range(20_000)) / 20_000
        # each standard sampler's rule is applied without asking it (a new SDK's ParentBased
        # may hide its root: then the sampler is asked, as for any other)
        assert setup.bound is not None
    finally:
        setup.provider.shutdown()
    assert abs(kept - share) <= 5 * math.sqrt(share * (1 - share) / 20_000), kept  # 5 sigma


@pytest.mark.parametrize("flags", ["01", "00"])
def test_a_trusted_parent_decides_by_its_sampled_flag_whatever_the_ratio(
    monkeypatch: pytest.MonkeyPatch, flags: str
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.5")
    parent = TraceContextTextMapPropagator().extract(
        {"traceparent": f"00-{'1' * 32}-{'2' * 16}-{flags}"}
    )
    setup = Tracing(["127.0.0.1"])
    try:
        assert {setup.sampled(parent) for _ in range(200)} == {flags == "01"}
    finally:
        setup.provider.shutdown()


def _recorded(sampler: Sampler) -> tuple[Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=_Decided(sampler))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test"), exporter


def test_inside_a_kept_request_every_span_is_kept_with_its_attributes() -> None:
    tracer, exporter = _recorded(ALWAYS_OFF)  # never asked inside a kept request
    token = tracing.decided(True)
    try:
        tracing.install(_Recorder(tracer))
        ttl = {"broker.token.requested_ttl": 900}
        with tracer.start_as_current_span("request"), tracing.span("broker.token", **ttl) as span:
            span.set_attributes({"broker.token.source": "cache"})
    finally:
        tracing.install(None)
        tracing.reset(token)
    child, request = exporter.get_finished_spans()
    assert request.name == "request"
    assert child.parent is not None
    assert child.parent.span_id == request.context.span_id
    assert dict(child.attributes or {}) == {
        "broker.token.requested_ttl": 900,
        "broker.token.source": "cache",
    }
    assert tracing.request_sampled() is False  # the request is over


@pytest.mark.parametrize(("sampler", "kept"), [(ALWAYS_OFF, []), (ALWAYS_ON, ["child", "root"])])
def test_in_background_work_the_configured_sampler_decides(
    sampler: Sampler, kept: list[str]
) -> None:
    tracer, exporter = _recorded(sampler)
    tracing.install(_Recorder(tracer))
    background = tracing.decided(None)
    try:
        with tracing.span("root") as span:  # a scheduled key refresh, say
            span.set_attributes({"broker.keys.outcome": "ok"})
            with tracing.span("child"):
                pass
    finally:
        tracing.reset(background)
        tracing.install(None)
    assert [span.name for span in exporter.get_finished_spans()] == kept


def _request_scope() -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": "/v1/capture/session/token",
        "headers": [],
        "client": ("127.0.0.1", 5000),
    }


async def _through_middleware(
    monkeypatch: pytest.MonkeyPatch, sampler: str, context: bool | None = False
) -> tuple[list[bool | None], tuple[ReadableSpan, ...]]:
    """One request through the middleware, in a context of its own as a server runs it
    (`context`: what that context says before the middleware decides)."""
    shipper: list[MemoryShipper] = []
    monkeypatch.setattr(otel, "_export_process", lambda r, _: _kept(shipper, MemoryShipper(r)))
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)
    setup = Tracing([])
    seen: list[bool | None] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(tracing.request_sampled())
        with tracing.span("broker.authenticate"):
            tracing.annotate(**{"broker.identity.outcome": "ok"})
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"x-request-id", b"r1")]}
        )
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        return None

    async def request() -> None:
        token = tracing.decided(context)
        await TracingMiddleware(app, tracing_=setup)(_request_scope(), receive, send)
        seen.append(tracing.request_sampled())  # as it was before the request
        tracing.reset(token)

    contextvars.copy_context().run(setup.start)  # the lifespan's context, not the request's
    try:
        await asyncio.create_task(request())
    finally:
        await setup.stop()
    return seen, shipper[0].spans()


async def test_a_kept_request_is_a_server_span_with_its_children(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen, spans = await _through_middleware(monkeypatch, "always_on")
    assert seen == [True, False]
    child, request = spans
    assert request.kind is SpanKind.SERVER
    assert request.name == "POST request"  # no route in this scope
    assert dict(request.attributes or {}) == {
        "http.request.method": "POST",
        "http.route": "unmatched",
        "http.response.status_code": 200,
        "broker.request_id": "r1",
    }
    assert child.name == "broker.authenticate"
    assert child.parent is not None
    assert child.parent.span_id == request.context.span_id
    assert dict(child.attributes or {}) == {"broker.identity.outcome": "ok"}


@pytest.mark.parametrize("context", [False, None])
async def test_a_dropped_request_builds_no_span(
    monkeypatch: pytest.MonkeyPatch, context: bool | None
) -> None:
    """Whether its context was left as nobody marked it (a server's), or came from the
    lifespan's own (where the sampler decides span by span)."""
    seen, spans = await _through_middleware(monkeypatch, "always_off", context)
    assert seen == [False, context]
    assert spans == ()


@pytest.mark.parametrize("trusted", [[], ["10.0.0.0/8"]])
async def test_requests_through_the_middleware_are_kept_as_often_as_the_sampler_says(
    monkeypatch: pytest.MonkeyPatch, trusted: list[str]
) -> None:
    """Decided once each: by the draw alone when no proxy is trusted, else as a trusted
    proxy's flag or the sampler says (this peer is not a trusted one)."""
    monkeypatch.setattr(otel, "_export_process", lambda resource, _: MemoryShipper(resource))
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.3")
    setup = Tracing(trusted)
    seen: list[bool | None] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(tracing.request_sampled())

    async def request() -> None:
        await TracingMiddleware(app, tracing_=setup)(_request_scope(), _no_body, _nowhere)

    requests = 4_000
    try:
        for _ in range(requests):
            await asyncio.create_task(request())  # each in a context of its own, as served
    finally:
        await setup.stop()
    share = seen.count(True) / requests
    assert abs(share - 0.3) <= 5 * math.sqrt(0.3 * 0.7 / requests), share  # 5 sigma


def _kept(shippers: list[MemoryShipper], shipper: MemoryShipper) -> MemoryShipper:
    shippers.append(shipper)
    return shipper


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _nowhere(message: Message) -> None:
    return None
