"""A kept request's spans, built as plain values: once rebuilt in the export process, the
same records the SDK's tracer would have made (ids, parents, kinds, attributes, status,
times, resource, scope), through the seam the broker's code calls."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, StatusCode, TraceFlags

from app.observability import kept_spans, tracing
from app.observability.kept_spans import KeptSpans
from app.observability.otel import _Recorder
from app.observability.span_outbox import SpanOutbox
from tests.fakes.span_shipper import MemoryShipper

RESOURCE = Resource.create({"service.name": "broker"})
SCOPE = InstrumentationScope("videodb-token-broker", "1.2.3")


class Exported:
    """The spans as the export process would hand them to the OTLP exporter."""

    def __init__(self, outbox: SpanOutbox, shipper: MemoryShipper) -> None:
        self.outbox = outbox
        self.shipper = shipper

    def get_finished_spans(self) -> tuple[ReadableSpan, ...]:
        self.outbox.ship()
        return self.shipper.spans()


@pytest.fixture
def kept() -> Iterator[tuple[KeptSpans, Exported]]:
    shipper = MemoryShipper(RESOURCE)
    outbox = SpanOutbox(shipper)
    provider = TracerProvider(resource=RESOURCE)
    tracing.install(_Recorder(provider.get_tracer("unused")))
    token = tracing.decided(True)  # a request the sampler kept
    yield KeptSpans(outbox, provider.id_generator, SCOPE), Exported(outbox, shipper)
    tracing.reset(token)
    tracing.install(None)


async def test_a_kept_requests_spans_nest_under_its_span_in_one_trace(
    kept: tuple[KeptSpans, Exported],
) -> None:
    spans, exporter = kept

    async def token() -> str:
        with tracing.span("videodb create_session_token", **{"broker.attempt": 1}):
            tracing.annotate(**{"http.response.status_code": 200})
        return "upstream"

    before = time.time_ns()
    with spans.request("POST request", None) as request:
        with tracing.span("broker.authenticate"):
            tracing.annotate(**{"broker.identity.outcome": "ok"})
        asked: dict[str, tracing.AttributeValue] = {"broker.token.requested_ttl": 900}
        await tracing.traced("broker.token", token(), lambda s: {"broker.token.source": s}, asked)
        assert asked == {"broker.token.requested_ttl": 900}  # the caller's dict, untouched
        tracing.annotate(**{"broker.request_id": "r1"})  # the innermost open: the request
        request.name = "POST /v1/capture/session/token"
    assert kept_spans.current() is None  # the request is over
    auth, attempt, tok, req = exporter.get_finished_spans()

    assert [s.name for s in (auth, attempt, tok, req)] == [
        "broker.authenticate",
        "videodb create_session_token",
        "broker.token",
        "POST /v1/capture/session/token",
    ]
    assert req.parent is None
    assert _parent(auth) == _parent(tok) == req.context.span_id
    assert _parent(attempt) == tok.context.span_id
    assert len({s.context.trace_id for s in (auth, attempt, tok, req)}) == 1
    assert len({s.context.span_id for s in (auth, attempt, tok, req)}) == 4
    assert req.kind is SpanKind.SERVER
    assert {s.kind for s in (auth, attempt, tok)} == {SpanKind.INTERNAL}
    assert all(s.context.trace_flags.sampled and not s.context.is_remote for s in (req, auth))
    assert dict(req.attributes or {}) == {"broker.request_id": "r1"}
    assert dict(auth.attributes or {}) == {"broker.identity.outcome": "ok"}
    assert dict(attempt.attributes or {}) == {
        "broker.attempt": 1,
        "http.response.status_code": 200,
    }
    assert dict(tok.attributes or {}) == {
        "broker.token.requested_ttl": 900,
        "broker.token.source": "upstream",
    }
    for span in (auth, attempt, tok, req):
        assert span.status.status_code is StatusCode.UNSET
        assert span.start_time is not None
        assert span.end_time is not None
        assert before <= span.start_time <= span.end_time <= time.time_ns()
        assert span.resource == RESOURCE
        assert span.instrumentation_scope == SCOPE
    assert tok.start_time is not None
    assert attempt.start_time is not None
    assert tok.start_time <= attempt.start_time  # the child starts inside its parent


def test_an_error_is_recorded_by_its_type_never_its_message(
    kept: tuple[KeptSpans, Exported],
) -> None:
    spans, exporter = kept
    secret = "sk-must-not-be-exported-0123"
    with (
        pytest.raises(ValueError, match="sk-"),
        spans.request("POST request", None),
        tracing.span("broker.token"),
    ):
        raise ValueError(f"bad key {secret}")
    child, request = exporter.get_finished_spans()
    for span in (child, request):
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description is None
        assert dict(span.attributes or {}) == {"error.type": "ValueError"}
        assert span.events == ()
    with spans.request("POST request", None) as answered:
        answered.failed()  # a 5xx answer: an error, with no exception to name
    (last,) = exporter.get_finished_spans()[2:]
    assert last.status.status_code is StatusCode.ERROR
    assert dict(last.attributes or {}) == {}


def test_a_trusted_proxys_span_is_the_parent_in_its_trace(
    kept: tuple[KeptSpans, Exported],
) -> None:
    spans, exporter = kept
    remote = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(1))
    with spans.request("POST request", remote):
        pass
    invalid = SpanContext(0, 0, is_remote=True)  # what a malformed traceparent leaves
    with spans.request("POST request", invalid):
        pass
    continued, fresh = exporter.get_finished_spans()
    assert continued.context.trace_id == 0xABC
    assert continued.parent == remote
    assert fresh.parent is None
    assert fresh.context.trace_id not in (0, 0xABC)


def _parent(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id
