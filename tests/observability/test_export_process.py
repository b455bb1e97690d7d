"""The OTLP exporter in a child process: what reaches a real receiver over HTTP is what the
exporter in the broker's own process would have sent, and a child that dies or hangs costs
one batch, never the broker."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    set_span_in_context,
)
from opentelemetry.trace.span import NonRecordingSpan, TraceState

from app.observability import export_process
from app.observability.export_process import ExportProcess, _Resource
from harness.otlp_receiver import OtlpReceiver
from harness.servers import ThreadedServer
from harness.waiting import wait_for

RESOURCE = Resource.create({"service.name": "broker", "service.version": "1.2.3"})


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    server = ThreadedServer(receiver).start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", server.url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2")
    yield receiver
    server.stop()


def _spans() -> tuple[ReadableSpan, ...]:
    """Spans with every field the broker's can carry, and some it does not use yet."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("videodb-token-broker", "1.2.3")
    remote = SpanContext(
        0x1234,
        0x99,
        is_remote=True,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("p", "q")]),
    )
    linked = SpanContext(0x77, 0x88, is_remote=False, trace_flags=TraceFlags(1))
    with tracer.start_as_current_span(
        "POST /v1/capture/session/token",
        context=set_span_in_context(NonRecordingSpan(remote)),
        kind=SpanKind.SERVER,
        links=[Link(linked, {"why": "test"})],
    ) as request:
        request.set_attributes({"http.response.status_code": 200, "http.route": "/v1/x"})
        with tracer.start_as_current_span("broker.token") as token:
            token.set_attributes({"broker.token.source": "cache", "ratio": 0.5, "ok": True})
            token.add_event("coalesced", {"waiters": 3})
        with tracer.start_as_current_span("broker.authenticate") as auth:
            auth.set_status(Status(StatusCode.ERROR))
            auth.set_attribute("error.type", "ExpiredSignatureError")
    provider.shutdown()
    return memory.get_finished_spans()


def test_what_the_collector_gets_is_what_the_exporter_would_have_sent_in_process(
    collector: OtlpReceiver,
) -> None:
    spans = _spans()
    exporter = ExportProcess(RESOURCE, export_timeout=2)
    try:
        assert exporter.export(spans) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    (received,) = collector.requests
    expected = ExportTraceServiceRequest(resource_spans=encode_spans(spans).resource_spans)
    assert received == expected  # every field: ids, parents, remote flags, state, times, ...
    names = [span["name"] for span in collector.spans()]
    assert names == ["broker.token", "broker.authenticate", "POST /v1/capture/session/token"]


def test_a_failed_export_is_answered_as_failed(collector: OtlpReceiver) -> None:
    collector.fault = "reject"
    exporter = ExportProcess(RESOURCE, export_timeout=2)
    try:
        assert exporter.export(_spans()) is SpanExportResult.FAILURE
        collector.fault = None
        assert exporter.export(_spans()) is SpanExportResult.SUCCESS  # the same child
    finally:
        exporter.shutdown()


def test_a_child_that_dies_costs_its_batch_and_a_new_one_takes_a_later_one(
    collector: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export_process, "RESTART_FIRST_WAIT_SECONDS", 0.2)
    collector.fault, collector.delay = "slow", 30.0  # the child is mid-export when it dies
    exporter = ExportProcess(RESOURCE, export_timeout=60)
    results: list[SpanExportResult] = []
    exporting = threading.Thread(target=lambda: results.append(exporter.export(_spans())))
    try:
        exporting.start()
        wait_for(lambda: exporter.child_pid is not None, "a child")
        first = exporter.child_pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        exporting.join(30)
        assert results == [SpanExportResult.FAILURE]  # at its death, not after the 30 s
        collector.fault = None
        time.sleep(0.3)  # past the wait before the next start
        assert exporter.export(_spans()) is SpanExportResult.SUCCESS
        assert exporter.child_pid not in (None, first)
        assert exporter.starts == 2
    finally:
        exporter.shutdown()
    assert exporter.child_pid is None


def test_a_child_that_cannot_run_is_started_again_less_and_less_often(
    collector: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broken install, say: every batch in the meantime fails at once, with no new start."""
    now = [1000.0]  # the exporter's clock, moved by the test
    monkeypatch.setattr(export_process, "time", SimpleNamespace(monotonic=lambda: now[0]))
    crashing = (sys.executable, "-c", "raise SystemExit(3)")
    exporter = ExportProcess(RESOURCE, export_timeout=2, command=crashing)
    try:
        starts = []
        steps = (0, 0.5, 1, 2.9, 3, 7, 15, 31, 62.9, 63, 122.9, 123, 182.9, 183)
        for step in steps:
            now[0] = 1000.0 + step
            assert exporter.export(_spans()) is SpanExportResult.FAILURE
            starts.append(exporter.starts)
    finally:
        exporter.shutdown()
    # started at 0, then no sooner than 1 s after, 2 s, 4 s, 8 s, 16 s, 32 s, then 60 s at most
    assert starts == [1, 1, 2, 2, 3, 4, 5, 6, 6, 7, 7, 8, 8, 9]
    assert collector.requests == []


def test_the_child_gets_no_setting_of_the_broker(
    collector: OtlpReceiver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The VideoDB key and the broker's secrets stay in the broker; the exporter's own
    variables and the rest of the environment (proxies, CA bundles) reach the child."""
    monkeypatch.setenv("VIDEO_DB_API_KEY", "sk-never-in-the-child-0123")
    monkeypatch.setenv("BROKER_AUTH_HS256_SECRET", "s" * 40)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    seen = tmp_path / "environment.json"
    dump = "import json, os, sys; open(sys.argv[1], 'w').write(json.dumps(dict(os.environ)))"
    exporter = ExportProcess(RESOURCE, 2, command=(sys.executable, "-c", dump, str(seen)))
    try:
        exporter.export(_spans())  # the child writes its environment and leaves: a failure
    finally:
        exporter.shutdown()
    environment = json.loads(seen.read_text())
    assert not [name for name in environment if name.startswith(("BROKER_", "VIDEO_DB_"))]
    assert "sk-never-in-the-child" not in seen.read_text()
    assert environment["HTTPS_PROXY"] == "http://proxy.internal:3128"
    assert environment["OTEL_EXPORTER_OTLP_ENDPOINT"] == os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"]


def test_a_hung_child_is_killed_and_its_batch_failed(
    collector: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    collector.fault, collector.delay = "slow", 60.0
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "60")  # the child's exporter waits on
    monkeypatch.setattr(export_process, "ANSWER_SLACK_SECONDS", 2.0)
    exporter = ExportProcess(RESOURCE, export_timeout=1)  # the broker waits 3 s for an answer
    try:
        assert exporter.export(_spans()) is SpanExportResult.FAILURE
        assert exporter.child_pid is None  # killed and reaped: none left behind
    finally:
        exporter.shutdown()


def test_a_child_that_never_reads_cannot_block_a_large_batch_for_good(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A child hung before its first read (in its imports, say): a batch larger than the
    pipe's buffer cannot be written whole, and the send would wait for good without the
    watchdog that kills the child when the answer is due."""
    monkeypatch.setattr(export_process, "ANSWER_SLACK_SECONDS", 2.0)
    never_reads = (sys.executable, "-c", "import time; time.sleep(120)")
    exporter = ExportProcess(RESOURCE, export_timeout=1, command=never_reads)
    large = [_with_attribute(span, "x" * 100_000) for span in _spans()]  # about 300 KB
    results: list[SpanExportResult] = []
    exporting = threading.Thread(target=lambda: results.append(exporter.export(large)))
    started = time.monotonic()
    exporting.start()
    exporting.join(60)  # the answer is due after 3 s; 60 bounds the test, not the code
    try:
        assert results == [SpanExportResult.FAILURE], "the send is still blocked"
        assert time.monotonic() - started < 30
        assert exporter.child_pid is None  # killed and reaped: none left behind
    finally:
        exporter.abandon()
        exporting.join(10)


def _with_attribute(span: ReadableSpan, value: str) -> ReadableSpan:
    return ReadableSpan(
        name=span.name,
        context=span.get_span_context(),
        parent=span.parent,
        resource=span.resource,
        attributes={**(span.attributes or {}), "padding": value},
        start_time=span.start_time,
        end_time=span.end_time,
    )


def test_shutdown_ends_the_child_and_abandon_kills_it_at_once(collector: OtlpReceiver) -> None:
    exporter = ExportProcess(RESOURCE, export_timeout=2)
    assert exporter.export(_spans()) is SpanExportResult.SUCCESS
    pid = exporter.child_pid
    assert pid is not None
    exporter.shutdown()
    assert exporter.child_pid is None
    assert not _alive(pid)

    collector.fault, collector.delay = "slow", 30.0
    hung = ExportProcess(RESOURCE, export_timeout=30)
    results: list[SpanExportResult] = []
    exporting = threading.Thread(target=lambda: results.append(hung.export(_spans())))
    exporting.start()
    wait_for(lambda: hung.child_pid is not None, "a child")
    hung.abandon()  # shutdown ran out of time: from another thread, as otel.py calls it
    exporting.join(30)
    assert results == [SpanExportResult.FAILURE]
    assert hung.export(_spans()) is SpanExportResult.FAILURE  # and no new child
    assert hung.child_pid is None


def test_the_resource_hashes_and_compares_as_the_one_it_stands_for() -> None:
    fixed = _Resource(dict(RESOURCE.attributes), RESOURCE.schema_url)
    assert fixed == RESOURCE
    assert hash(fixed) == hash(RESOURCE)
    assert dict(fixed.attributes) == dict(RESOURCE.attributes)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
