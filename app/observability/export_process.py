"""The OTLP exporter in a process of its own, so that neither encoding spans nor moving them
takes the GIL the event loop needs.

The broker's finished spans wait on the event loop as plain values (names, ids, times,
attributes: `span_outbox.py`); every few dozen, or within half a second, they are pickled
there and written to this child's pipe without waiting: a pipe the child has not emptied
keeps the rest for the next write, and past MAX_UNSENT_BYTES spans are dropped, not queued.
No thread of the broker's touches a span: the SDK's batch processor on a thread of the
broker's took the GIL from the loop for every batch it wired, pickled, sent and waited on
(docs/performance.md, "Thirteenth pass"). The child rebuilds the spans and runs the SDK's own
batch processor (OTEL_BSP_*: its batches, its queue and drops, its schedule) in front of
OpenTelemetry's OTLP exporter; after each export it writes one line back, `1 N` (sent) or
`0 N` (failed), which the broker reads on its loop and logs once per incident (otel.py).

The child, `python -P -m app.observability.export_process`, is started on first use: a fresh
interpreter (never a `fork` of a process with threads) that imports only the exporter, reads
the same `OTEL_*` variables, and sits in a session of its own, so a terminal's Ctrl-C reaches
the broker alone. It exits when its pipe closes, whether the broker shut down or died, after
exporting what it holds. A child that died, or took nothing from its pipe for longer than the
export timeout and STALL_SLACK_SECONDS while something waited for it, is killed and its spans
counted lost; the next is started with a later batch, after a wait that doubles while
children keep failing (RESTART_*).
The pipes carry pickles between two processes of the same program, created by the broker
and handed to the child alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from types import MappingProxyType
from typing import Any, BinaryIO

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import DEFAULT_TRACE_STATE, TraceState
from opentelemetry.util.types import Attributes

# A span as plain values, what crosses the pipe: see wire for the fields.
Wired = tuple[Any, ...]
# What the broker is told of each export: whether it went out, and how many spans it held.
Report = Callable[[bool, int, str], None]
# How long past the exporter's own timeout a child may take nothing from its pipe while
# something waits for it, before the broker takes it for hung: room for a new child's
# imports on a busy machine.
STALL_SLACK_SECONDS = 5.0
# What may wait for a child that reads slower than spans come (about 4,000 spans): past it,
# new batches are dropped, as the SDK's batch processor drops past its queue.
MAX_UNSENT_BYTES = 1 << 20
# After a child died, hung or could not start, the next is started no sooner than this, the
# wait doubling with each failure in a row (a child that reported an export ends the row)
# up to the longest: a child that cannot run (a broken install, a limit on processes) costs
# a start a minute, not one a batch.
RESTART_FIRST_WAIT_SECONDS = 1.0
RESTART_LONGEST_WAIT_SECONDS = 60.0
# The broker's own settings (the VideoDB key, secrets, Redis URLs) stay out of the child's
# environment: it needs OTEL_*, proxies and CA bundles, never these.
_BROKER_SETTINGS = ("BROKER_", "VIDEODB_", "VIDEO_DB_")
# Why spans were lost, as the broker logs it.
COLLECTOR_FAILED = "the collector refused the spans or did not answer in time"
CHILD_ENDED = "the export process ended"
CHILD_HUNG = "the export process stopped reading and was killed"
CHILD_BEHIND = "the export process is behind; spans past its backlog are dropped"
CHILD_RESTING = "the export process failed a moment ago and is not started yet"


def wire(span: ReadableSpan) -> Wired:
    """A finished span's fields, as values any process can rebuild it from.

    For the spans of the SDK's tracer (the broker's background work; a kept request's are
    built wired, kept_spans.py): a span with no events, links or trace state skips their
    walks, and the attributes are copied by their dict's own `copy`, where `dict()` of the
    read-only view the SDK hands out walked it in Python (docs/performance.md, "Eighth
    pass"). The fields: name, context, parent (each `wired_context`), kind, start, end,
    status code, status description, attributes, events, links, scope.
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
        wired_context(context),
        None if parent is None else wired_context(parent),
        span.kind.value,
        span.start_time,
        span.end_time,
        status.status_code.value,
        status.description,
        _plain(span.attributes),
        tuple((e.name, _plain(e.attributes), e.timestamp) for e in events) if events else (),
        tuple((wired_context(k.context), _plain(k.attributes)) for k in links) if links else (),
        None if scope is None else (scope.name, scope.version, scope.schema_url),
    )


def _plain(attributes: Attributes) -> dict[str, Any]:
    """Attributes as a plain dict (the SDK's read-only view copies its dict in C)."""
    if isinstance(attributes, MappingProxyType):
        return attributes.copy()
    return dict(attributes or {})


def wired_context(context: SpanContext) -> Wired:
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


def unwire(wired: Wired, resource: Resource) -> ReadableSpan:
    """The span `wire` took apart, with the broker's resource."""
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


class _Reporting(SpanExporter):
    """In the child: the OTLP exporter, each export's outcome written back to the broker."""

    def __init__(self, inner: SpanExporter, reports: int) -> None:
        self._inner = inner
        self._reports = reports

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._inner.export(spans)
        except Exception:  # the exporter's own bug must not end the export thread
            result = SpanExportResult.FAILURE
        sent = result is SpanExportResult.SUCCESS
        with contextlib.suppress(OSError):  # the broker is gone: nobody left to tell
            os.write(self._reports, b"%d %d\n" % (sent, len(spans)))
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._inner.force_flush(timeout_millis)


class _PlainValues(pickle.Unpickler):
    """Pickles of plain values only (tuples, lists, dicts, strings, numbers): no class or
    function of any module is ever looked up, whoever wrote to the pipe."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"{module}.{name} is not a plain value")


def _serve(batches: BinaryIO, reports: int) -> None:
    """The child: the resource first, then each batch's spans to the SDK's batch processor;
    at the end of the pipe, what it holds exported and the exporter shut down."""
    # Nothing here logs: the broker logs failed exports, once per incident (otel.py), in
    # its own format; a library's own line would reach stderr raw.
    logging.disable(logging.CRITICAL)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes, schema_url = _PlainValues(batches).load()
    resource = _Resource(attributes, schema_url)
    processor = BatchSpanProcessor(_Reporting(OTLPSpanExporter(), reports))
    try:
        while True:
            try:  # each batch a pickle of its own: an unpickler of its own
                batch: list[Wired] = _PlainValues(batches).load()
            except EOFError:
                return
            for wired in batch:
                processor.on_end(unwire(wired, resource))
    finally:
        processor.shutdown()  # type: ignore[no-untyped-call]


class ExportProcess:
    """The broker's end of the export child: batches written on the event loop, never
    waited on; the child's reports read there too."""

    def __init__(
        self,
        resource: Resource,
        export_timeout: float,
        report: Report,
        command: Sequence[str] = (sys.executable, "-P", "-m", __name__),
    ) -> None:
        self._resource = (dict(resource.attributes), resource.schema_url)
        self._hung_after = export_timeout + STALL_SLACK_SECONDS
        self._report = report
        self._command = list(command)  # the child's, before the two pipes' descriptors
        self._child: subprocess.Popen[bytes] | None = None
        self._batches: int | None = None  # the pipe's write end, non-blocking
        self._reports: int | None = None  # the reports' read end, watched by the loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unsent = b""  # what the pipe did not take yet; the loop writes it when it can
        self._stalled_since = 0.0  # time.monotonic() of the pipe's last progress
        self._drained: asyncio.Event | None = None  # set once nothing waits (close waits)
        self._heard = b""  # a report line not yet whole
        self._closed = False
        self._restart_at = 0.0  # time.monotonic() before which no child is started
        self._wait = RESTART_FIRST_WAIT_SECONDS
        self.starts = 0  # children started so far

    @property
    def child_pid(self) -> int | None:
        return None if self._child is None else self._child.pid

    def ship(self, batch: list[Wired]) -> None:
        """Hand a batch to the child, on the event loop: written now as far as its pipe
        takes it, the rest with the next; lost (and reported) when it cannot be. Spans that
        end once shutdown began are not exported."""
        if self._closed:
            return
        if self._batches is None:
            if time.monotonic() < self._restart_at:
                self._report(False, len(batch), CHILD_RESTING)
                return
            try:
                self._start_child()
            except (OSError, subprocess.SubprocessError):  # it could not start: later
                self._failed()
                self._report(False, len(batch), CHILD_RESTING)
                return
            if self._batches is None:  # it ended before it took the resource
                self._report(False, len(batch), CHILD_ENDED)
                return
        if self._unsent:
            if time.monotonic() - self._stalled_since > self._hung_after:
                self._failed()  # it stopped reading: killed; the next batch starts another
                self._report(False, len(batch), CHILD_HUNG)
                return
            if len(self._unsent) > MAX_UNSENT_BYTES:
                self._report(False, len(batch), CHILD_BEHIND)
                return
        self._write(self._unsent + pickle.dumps(batch, pickle.HIGHEST_PROTOCOL))

    def _write(self, data: bytes) -> None:
        """As much of `data` as the pipe takes now; the loop writes the rest when it can."""
        if self._batches is None:
            return
        try:
            written = os.write(self._batches, data)
        except BlockingIOError:
            written = 0
        except OSError:  # it died: its pipe is closed
            self._failed()
            self._report(False, 0, CHILD_ENDED)
            return
        if written or not self._unsent:
            self._stalled_since = time.monotonic()  # progress: a stall counts from here
        waited = bool(self._unsent)
        self._unsent = data[written:]
        if self._loop is not None and bool(self._unsent) != waited:
            if self._unsent:
                self._loop.add_writer(self._batches, self._drain)
            else:
                self._loop.remove_writer(self._batches)
        if not self._unsent and self._drained is not None:
            self._drained.set()

    def _drain(self) -> None:
        """The pipe takes more: the loop calls this while something waits."""
        self._write(self._unsent)

    async def close(self, within: float) -> bool:
        """What waits goes to the child, its pipe is closed, and it is given `within` seconds
        to export what it holds and exit; past that it is killed. Whether it finished."""
        self._closed = True
        if self._child is None:
            return True
        deadline = time.monotonic() + within
        if self._unsent:  # the loop writes it as the child reads
            self._drained = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), deadline - time.monotonic())
        if self._batches is not None:
            if self._loop is not None:
                self._loop.remove_writer(self._batches)
            os.close(self._batches)  # the child's end of input
            self._batches = None
        while self._child is not None and self._child.poll() is None:
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.01)
        finished = self._child is None or self._child.poll() is not None
        self._hear()  # its last reports
        self._end_child()
        return finished

    def _hear(self) -> None:
        """The child's reports as far as they came (the loop calls this when they do)."""
        if self._reports is None:
            return
        try:
            data = os.read(self._reports, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # it exited, or died
            if self._loop is not None:
                self._loop.remove_reader(self._reports)
            if not self._closed:
                self._failed()
                self._report(False, 0, CHILD_ENDED)
            return
        *lines, self._heard = (self._heard + data).split(b"\n")
        if lines:  # it runs: the next failure starts a new row of restarts
            self._wait = RESTART_FIRST_WAIT_SECONDS
        for line in lines:
            sent, _, count = line.partition(b" ")
            self._report(sent == b"1", int(count or 0), COLLECTOR_FAILED)

    def _failed(self) -> None:
        self._end_child()
        self._restart_at = time.monotonic() + self._wait
        self._wait = min(self._wait * 2, RESTART_LONGEST_WAIT_SECONDS)

    def _start_child(self) -> None:
        loop = asyncio.get_running_loop()  # the loop reads its reports: spans end on it
        to_child, batches = os.pipe()
        try:
            reports, from_child = os.pipe()
        except OSError:
            os.close(to_child)
            os.close(batches)
            raise
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
            os.close(reports)
            raise
        finally:
            os.close(to_child)
            os.close(from_child)
        self._batches, self._reports = batches, reports
        os.set_blocking(batches, False)
        os.set_blocking(reports, False)
        self._loop = loop
        loop.add_reader(reports, self._hear)
        self._write(pickle.dumps(self._resource, pickle.HIGHEST_PROTOCOL))

    def _end_child(self) -> None:
        if self._loop is not None:
            if self._reports is not None:
                self._loop.remove_reader(self._reports)
            if self._batches is not None:
                self._loop.remove_writer(self._batches)
        for descriptor in (self._batches, self._reports):
            if descriptor is not None:
                os.close(descriptor)
        self._batches = self._reports = None
        self._unsent = self._heard = b""
        if self._drained is not None:
            self._drained.set()
        if self._child is not None:
            if self._child.poll() is None:
                self._child.kill()
            self._child.wait()
            self._child = None


if __name__ == "__main__":
    try:
        with open(int(sys.argv[1]), "rb") as pipe:
            _serve(pipe, int(sys.argv[2]))
    except (EOFError, OSError, pickle.UnpicklingError):  # the broker went away mid-batch
        sys.exit(0)
