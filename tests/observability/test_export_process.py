"""The OTLP exporter in a child process: what reaches a real receiver over HTTP is what the
exporter in the broker's own process would have sent, a handed batch never waits on the
child, and a child that dies or hangs costs its spans, never the broker."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
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
from app.observability.export_process import (
    CHILD_BEHIND,
    CHILD_ENDED,
    CHILD_HUNG,
    COLLECTOR_FAILED,
    ExportProcess,
    Wired,
    _Resource,
    wire,
)
from harness.otlp_receiver import OtlpReceiver
from harness.servers import ThreadedServer

RESOURCE = Resource.create({"service.name": "broker", "service.version": "1.2.3"})


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    server = ThreadedServer(receiver).start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", server.url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # ms: the child exports soon
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


class Reports(list[tuple[bool, int, str]]):
    """What the broker is told, in order."""

    def __call__(self, sent: bool, spans: int, reason: str) -> None:
        self.append((sent, spans, reason))


async def until(check: Callable[[], bool], what: str, within: float = 20.0) -> None:
    """Until `check()` holds, the loop running meanwhile (the child's reports are read on
    it); an AssertionError naming `what` after `within` seconds."""
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"no {what} within {within} s"
        await asyncio.sleep(0.02)


def _batch() -> list[Wired]:
    return [wire(span) for span in _spans()]


async def test_what_the_collector_gets_is_what_the_exporter_would_have_sent_in_process(
    collector: OtlpReceiver,
) -> None:
    spans = _spans()
    reports = Reports()
    exporter = ExportProcess(RESOURCE, export_timeout=2, report=reports)
    exporter.ship([wire(span) for span in spans])
    assert await exporter.close(10)  # what the child held went out before it exited
    (received,) = collector.requests
    expected = ExportTraceServiceRequest(resource_spans=encode_spans(spans).resource_spans)
    assert received == expected  # every field: ids, parents, remote flags, state, times, ...
    names = [span["name"] for span in collector.spans()]
    assert names == ["broker.token", "broker.authenticate", "POST /v1/capture/session/token"]
    assert reports == [(True, 3, COLLECTOR_FAILED)]


async def test_a_failed_export_is_reported_as_failed(collector: OtlpReceiver) -> None:
    collector.fault = "reject"
    reports = Reports()
    exporter = ExportProcess(RESOURCE, export_timeout=2, report=reports)
    try:
        exporter.ship(_batch())
        await until(lambda: len(reports) == 1, "a report")
        assert reports[0] == (False, 3, COLLECTOR_FAILED)
        collector.fault = None
        exporter.ship(_batch())
        await until(lambda: len(reports) == 2, "a second report")
        assert reports[1][:2] == (True, 3)
        assert exporter.starts == 1  # the same child
    finally:
        await exporter.close(5)


async def test_a_child_that_dies_is_reported_and_a_new_one_takes_a_later_batch(
    collector: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export_process, "RESTART_FIRST_WAIT_SECONDS", 0.2)
    reports = Reports()
    exporter = ExportProcess(RESOURCE, export_timeout=2, report=reports)
    try:
        exporter.ship(_batch())
        await until(lambda: len(reports) == 1, "a report")
        first = exporter.child_pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await until(lambda: exporter.child_pid is None, "the child's end seen")
        assert reports[1] == (False, 0, CHILD_ENDED)
        await asyncio.sleep(0.3)  # past the wait before the next start
        exporter.ship(_batch())
        await until(lambda: len(reports) == 3, "a report from the new child")
        assert reports[2][:2] == (True, 3)
        assert exporter.child_pid not in (None, first)
        assert exporter.starts == 2
    finally:
        await exporter.close(5)
    assert exporter.child_pid is None


async def test_a_child_that_cannot_run_is_started_again_less_and_less_often(
    collector: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broken install, say: every batch in the meantime is lost at once, with no new start."""
    now = [1000.0]  # the exporter's clock, moved by the test
    monkeypatch.setattr(export_process, "time", SimpleNamespace(monotonic=lambda: now[0]))
    crashing = (sys.executable, "-c", "raise SystemExit(3)")
    reports = Reports()
    exporter = ExportProcess(RESOURCE, export_timeout=2, report=reports, command=crashing)
    try:
        starts = []
        steps = (0, 0.5, 1, 2.9, 3, 7, 15, 31, 62.9, 63, 122.9, 123, 182.9, 183)
        for step in steps:
            now[0] = 1000.0 + step
            exporter.ship(_batch())
            await until(lambda: exporter.child_pid is None, "the child's end seen")
            starts.append(exporter.starts)
    finally:
        await exporter.close(5)
    # started at 0, then no sooner than 1 s after, 2 s, 4 s, 8 s, 16 s, 32 s, then 60 s at most
    assert starts == [1, 1, 2, 2, 3, 4, 5, 6, 6, 7, 7, 8, 8, 9]
    assert not [report for report in reports if report[0]]
    assert collector.requests == []


async def test_the_child_gets_no_setting_of_the_broker(
    collector: OtlpReceiver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The VideoDB key and the broker's secrets stay in the broker; the exporter's own
    variables and the rest of the environment (proxies, CA bundles) reach the child."""
    monkeypatch.setenv("VIDEO_DB_API_KEY", "sk-never-in-the-child-0123")
    monkeypatch.setenv("BROKER_AUTH_HS256_SECRET", "s" * 40)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    seen = tmp_path / "environment.json"
    dump = "import json, os, sys; open(sys.argv[1], 'w').write(json.dumps(dict(os.environ)))"
    command = (sys.executable, "-c", dump, str(seen))
    exporter = ExportProcess(RESOURCE, 2, report=Reports(), command=command)
    try:
        exporter.ship(_batch())  # the child writes its environment and leaves
        await until(lambda: exporter.child_pid is None, "the child's end seen")
    finally:
        await exporter.close(5)
    environment = json.loads(seen.read_text())
    assert not [name for name in environment if name.startswith(("BROKER_", "VIDEO_DB_"))]
    assert "sk-never-in-the-child" not in seen.read_text()
    assert environment["HTTPS_PROXY"] == "http://proxy.internal:3128"
    assert environment["OTEL_EXPORTER_OTLP_ENDPOINT"] == os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"]


async def test_a_child_that_stops_reading_never_holds_the_loop_and_is_killed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A child hung before its first read (in its imports, say): a batch larger than the
    pipe's buffer is written as far as the pipe takes it and the rest kept; past a backlog,
    batches are dropped; once the pipe has stayed full past the export timeout and its
    slack, the child is killed and reaped."""
    monkeypatch.setattr(export_process, "STALL_SLACK_SECONDS", 0.5)
    monkeypatch.setattr(export_process, "MAX_UNSENT_BYTES", 100_000)
    never_reads = (sys.executable, "-c", "import time; time.sleep(120)")
    reports = Reports()
    exporter = ExportProcess(RESOURCE, export_timeout=0.5, report=reports, command=never_reads)
    large = [wire(_with_attribute(span, "x" * 100_000)) for span in _spans()]  # about 300 KB
    try:
        started = time.monotonic()
        exporter.ship(large)
        exporter.ship(_batch())
        assert time.monotonic() - started < 10  # handed over, not waited on (it never reads)
        assert reports == [(False, 3, CHILD_BEHIND)]  # the backlog is over its bound
        pid = exporter.child_pid
        assert pid is not None
        await asyncio.sleep(1.2)  # the pipe full for longer than the 1 s it may be
        exporter.ship(_batch())
        assert reports[1] == (False, 3, CHILD_HUNG)
        assert exporter.child_pid is None  # killed and reaped: none left behind
        assert not _alive(pid)
    finally:
        await exporter.close(5)


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


async def test_close_waits_for_the_child_to_export_and_kills_it_at_the_deadline(
    collector: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    exporter = ExportProcess(RESOURCE, export_timeout=2, report=Reports())
    exporter.ship(_batch())
    pid = exporter.child_pid
    assert pid is not None
    assert await exporter.close(10)
    assert exporter.child_pid is None
    assert not _alive(pid)
    assert len(collector.spans()) == 3
    exporter.ship(_batch())  # after shutdown began: not exported, no new child
    assert exporter.child_pid is None

    collector.fault, collector.delay = "slow", 30.0
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "30")
    hung = ExportProcess(RESOURCE, export_timeout=30, report=Reports())
    hung.ship(_batch())
    await asyncio.sleep(0.5)  # the child is mid-export
    pid = hung.child_pid
    assert pid is not None
    started = time.monotonic()
    assert not await hung.close(1)  # cut short
    assert time.monotonic() - started < 15  # not the 30 s its export would take
    assert hung.child_pid is None
    assert not _alive(pid)


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


class _RunsCode:
    """What a hostile pickle carries: a call of any function the unpickler looks up."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str, ...]]:
        return (os.mkdir, (str(self.marker),))


async def test_the_child_unpickles_plain_values_only(
    collector: OtlpReceiver, tmp_path: Path
) -> None:
    """Whatever reaches its pipe, the child looks up no function: a pickle that would call one
    ends the child (reported), and the call never happens."""
    marker = tmp_path / "ran"
    reports = Reports()
    exporter = ExportProcess(RESOURCE, export_timeout=2, report=reports)
    try:
        exporter.ship(_batch())
        await until(lambda: len(reports) == 1, "a report")
        exporter._write(pickle.dumps([_RunsCode(marker)]))
        await until(lambda: exporter.child_pid is None, "the child's end seen")
        assert reports[1] == (False, 0, CHILD_ENDED)
        assert not marker.exists()
    finally:
        await exporter.close(5)


async def test_a_backlog_is_written_as_the_child_reads_and_a_slow_start_is_not_a_hang(
    collector: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child that takes a while before its first read (a cold start on a busy machine):
    what its pipe did not take is written by the loop as it reads, with no further batch, and
    once it reads it is not taken for hung however long it took."""
    monkeypatch.setattr(export_process, "STALL_SLACK_SECONDS", 0.5)
    slow_start = (
        sys.executable,
        "-c",
        "import runpy, time; time.sleep(1.5); "
        "runpy.run_module('app.observability.export_process', run_name='__main__')",
    )
    reports = Reports()
    exporter = ExportProcess(RESOURCE, export_timeout=0.5, report=reports, command=slow_start)
    large = [wire(_with_attribute(span, "x" * 100_000)) for span in _spans()]  # about 300 KB
    try:
        exporter.ship(large)
        await until(lambda: len(collector.spans()) == 3, "the backlog's spans at the collector")
        exporter.ship(_batch())  # past the 1 s stall the backlog had: no kill
        await until(lambda: len(reports) == 2, "two reports")
        assert [report[:2] for report in reports] == [(True, 3), (True, 3)]
        assert exporter.starts == 1
    finally:
        await exporter.close(5)
