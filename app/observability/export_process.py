"""The OTLP exporter in a process of its own, so that encoding spans never takes the GIL the
event loop needs.

The SDK's batch processor still queues and batches the spans in the broker (a full queue
drops, as before); each batch then crosses a pipe as plain values (names, ids, times,
attributes: a few µs a span, pickled by `multiprocessing`) to a child process that rebuilds
the spans and hands them to OpenTelemetry's own OTLP exporter. Encoding a span to protobuf
costs about 23 µs, the posting more, and in the broker's process both held the GIL its event
loop needs (docs/performance.md, "Third pass: the export in a process of its own").

The child, `python -P -m app.observability.export_process`, is started on first use: a fresh
interpreter (never a `fork` of a process with threads) that imports only the exporter, reads
the same `OTEL_*` variables, and sits in a session of its own, so a terminal's Ctrl-C reaches
the broker alone. It exits when its pipe closes, whether the broker shut down or died. A
child that died or hung is killed and its batch reported as failed, so that `otel.py` logs
it once per incident; the next is started with a later batch, after a wait that doubles
while children keep failing (RESTART_*). The pipes carry
`multiprocessing.connection`'s framing (length-prefixed pickles) between two processes of
the same program, created by the broker and handed to the child alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from types import MappingProxyType
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import DEFAULT_TRACE_STATE, TraceState
from opentelemetry.util.types import Attributes

# A span as plain values, what crosses the pipe: see _wire for the fields.
Wired = tuple[Any, ...]
# How long past the exporter's own timeout the broker waits for a batch's answer before it
# takes the child for hung: room for a new child's imports on a busy machine.
ANSWER_SLACK_SECONDS = 5.0
# After a child died, hung or could not start, the next is started no sooner than this, the
# wait doubling with each failure in a row up to the longest: a child that cannot run (a
# broken install, a limit on processes) costs a start a minute, not one a batch.
RESTART_FIRST_WAIT_SECONDS = 1.0
RESTART_LONGEST_WAIT_SECONDS = 60.0
# The broker's own settings (the VideoDB key, secrets, Redis URLs) stay out of the child's
# environment: it needs OTEL_*, proxies and CA bundles, never these.
_BROKER_SETTINGS = ("BROKER_", "VIDEO_DB_", "VIDEODB_")


class _Resting(Exception):
    """The last child failed a moment ago: this batch is not exported."""


def _wire(span: ReadableSpan) -> Wired:
    """A finished span's fields, as values any process can rebuild it from.

    Run on the batch processor's thread, with the GIL the event loop needs, for every span: a
    span with no events, links or trace state (every span of a kept request) skips their
    walks, and the attributes are copied by their dict's own `copy`, where `dict()` of the
    read-only view the SDK hands out walked it in Python (3.5 -> 2.1 µs a span,
    docs/performance.md, "Eighth pass").
    """
    context = span.get_span_context()
    assert context is not None  # every span the SDK ends has one
    parent = span.parent
    scope = span.instrumentation_scope
    status = span.status
    events = span.events
    links = span.links
    return (
        span.name,
        _wired_context(context),
        None if parent is None else _wired_context(parent),
        span.kind.value,
        span.start_time,
        span.end_time,
        status.status_code.value,
        status.description,
        _plain(span.attributes),
        tuple((e.name, _plain(e.attributes), e.timestamp) for e in events) if events else (),
        tuple((_wired_context(k.context), _plain(k.attributes)) for k in links) if links else (),
        None if scope is None else (scope.name, scope.version, scope.schema_url),
    )


def _plain(attributes: Attributes) -> dict[str, Any]:
    """Attributes as a plain dict (the SDK's read-only view copies its dict in C)."""
    if isinstance(attributes, MappingProxyType):
        return attributes.copy()
    return dict(attributes or {})


def _wired_context(context: SpanContext) -> Wired:
    state = context.trace_state
    return (
        context.trace_id,
        context.span_id,
        context.is_remote,
        int(context.trace_flags),
        () if state is DEFAULT_TRACE_STATE else tuple(state.items()),
    )


def _context(wired: Wired) -> SpanContext:
    trace_id, span_id, is_remote, flags, state = wired
    return SpanContext(trace_id, span_id, is_remote, TraceFlags(flags), TraceState(state))


def _unwire(wired: Wired, resource: Resource) -> ReadableSpan:
    """The span `_wire` took apart, with the broker's resource."""
    (
        name,
        context,
        parent,
        kind,
        start,
        end,
        status_code,
        description,
        attributes,
        events,
        links,
        scope,
    ) = wired
    return ReadableSpan(
        name=name,
        context=_context(context),
        parent=None if parent is None else _context(parent),
        resource=resource,
        attributes=attributes,
        events=[Event(n, a, timestamp=t) for n, a, t in events],
        links=[Link(_context(c), a) for c, a in links],
        kind=SpanKind(kind),
        status=Status(StatusCode(status_code), description),
        start_time=start,
        end_time=end,
        instrumentation_scope=None if scope is None else InstrumentationScope(*scope),
    )


class _Resource(Resource):
    """A resource whose hash is worked out once. The OTLP encoder groups every exported span
    by its resource, and Resource's own hash serialises its attributes as JSON each time; a
    resource is immutable, so its hash never changes (docs/performance.md, "Tracing")."""

    def __init__(self, attributes: dict[str, Any], schema_url: str) -> None:
        super().__init__(attributes, schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash


def _serve(batches: Connection, answers: Connection) -> None:
    """The child: the resource first, then each batch exported and answered with whether it
    went out; at the end of the pipe, the exporter's own shutdown."""
    # Nothing here logs: the broker logs a failed batch, once per incident (otel.py), in its
    # own format; a library's own line would reach stderr raw.
    logging.disable(logging.CRITICAL)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    attributes, schema_url = batches.recv()
    resource = _Resource(attributes, schema_url)
    exporter: SpanExporter = OTLPSpanExporter()
    try:
        while True:
            try:
                batch: list[Wired] = batches.recv()
            except EOFError:
                return
            try:
                spans = [_unwire(wired, resource) for wired in batch]
                sent = exporter.export(spans) is SpanExportResult.SUCCESS
            except Exception:  # the exporter's own bug must not end the child
                sent = False
            answers.send(sent)
    finally:
        exporter.shutdown()


class ExportProcess(SpanExporter):
    """A span exporter that hands each batch to the OTLP exporter in a child process. The
    SDK's batch processor calls it from one thread at a time."""

    def __init__(
        self,
        resource: Resource,
        export_timeout: float,
        command: Sequence[str] = (sys.executable, "-P", "-m", __name__),
    ) -> None:
        self._resource = (dict(resource.attributes), resource.schema_url)
        self._answer_within = export_timeout + ANSWER_SLACK_SECONDS
        self._command = list(command)  # the child's, before the two pipes' descriptors
        self._child: subprocess.Popen[bytes] | None = None
        self._batches: Connection | None = None
        self._answers: Connection | None = None
        self._abandoned = False
        self._restart_at = 0.0  # time.monotonic() before which no child is started
        self._wait = RESTART_FIRST_WAIT_SECONDS
        self.starts = 0  # children started so far

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._abandoned:
            return SpanExportResult.FAILURE
        batch = [_wire(span) for span in spans]
        try:
            batches, answers = self._connected()
        except _Resting:
            return SpanExportResult.FAILURE
        except OSError:  # it could not start: tried again later
            self._failed()
            return SpanExportResult.FAILURE
        # A child that stops reading (hung before its first read, say) would block the send
        # of a batch larger than the pipe's buffer for good: the watchdog kills it when the
        # answer is due, which fails the write.
        watchdog = threading.Timer(self._answer_within, self._kill_child)
        watchdog.daemon = True
        watchdog.start()
        try:
            batches.send(batch)
            if not answers.poll(self._answer_within):
                raise TimeoutError("the export process did not answer")  # hung
            sent: bool = answers.recv()
        except (OSError, EOFError):  # it died or hung: killed, and replaced
            self._failed()
            return SpanExportResult.FAILURE
        finally:
            watchdog.cancel()
        self._wait = RESTART_FIRST_WAIT_SECONDS
        return SpanExportResult.SUCCESS if sent else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        """Close the pipe: the child exports nothing more, shuts its exporter down, exits."""
        if self._batches is not None:
            self._batches.close()
            self._batches = None
        if self._child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):  # then killed
                self._child.wait(self._answer_within)
        self._end_child()

    def abandon(self) -> None:
        """Kill the child now and export nothing more: shutdown ran out of time. Called from
        another thread than the exports: one in flight sees its child's end and cleans up."""
        self._abandoned = True
        self._kill_child()

    def _kill_child(self) -> None:
        """From any thread: the child ends now; the export in flight sees it and cleans up."""
        child = self._child
        if child is not None and child.poll() is None:
            child.kill()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True  # each batch is answered before the next is sent: nothing is held here

    @property
    def child_pid(self) -> int | None:
        return None if self._child is None else self._child.pid

    def _connected(self) -> tuple[Connection, Connection]:
        if self._child is not None and self._child.poll() is not None:
            self._failed()  # it died between batches
        if self._batches is None or self._answers is None or self._child is None:
            if time.monotonic() < self._restart_at:
                raise _Resting
            self._start_child()
        assert self._batches is not None
        assert self._answers is not None
        return self._batches, self._answers

    def _failed(self) -> None:
        self._end_child()
        self._restart_at = time.monotonic() + self._wait
        self._wait = min(self._wait * 2, RESTART_LONGEST_WAIT_SECONDS)

    def _start_child(self) -> None:
        to_child, batches = os.pipe()
        answers, from_child = os.pipe()
        # The child imports what the broker imported: the broker's import path, not whatever
        # the working directory holds (`-P`).
        path = os.pathsep.join(entry for entry in sys.path if entry)
        env = {k: v for k, v in os.environ.items() if not k.startswith(_BROKER_SETTINGS)}
        try:
            self.starts += 1
            self._child = subprocess.Popen(  # noqa: S603 (this interpreter, this module)
                [*self._command, str(to_child), str(from_child)],
                pass_fds=(to_child, from_child),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env={**env, "PYTHONPATH": path},
                start_new_session=True,  # a terminal's Ctrl-C is for the broker
            )
        except BaseException:
            os.close(batches)
            os.close(answers)
            raise
        finally:
            os.close(to_child)
            os.close(from_child)
        self._batches = Connection(batches, readable=False)
        self._answers = Connection(answers, writable=False)
        self._batches.send(self._resource)

    def _end_child(self) -> None:
        for connection in (self._batches, self._answers):
            if connection is not None:
                connection.close()
        self._batches = self._answers = None
        if self._child is not None:
            if self._child.poll() is None:
                self._child.kill()
            self._child.wait()
            self._child = None


if __name__ == "__main__":
    try:
        _serve(
            Connection(int(sys.argv[1]), writable=False),
            Connection(int(sys.argv[2]), readable=False),
        )
    except (EOFError, OSError):  # the broker went away mid-batch: nothing left to tell it
        sys.exit(0)
