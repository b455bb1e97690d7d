"""The spans of a request the sampler kept, built as plain values.

A kept request's spans are known to be sampled before the first is started, carry only the
broker's own attributes (names, labels, counts, fingerprints: `tracing.AttributeValue`, typed
and never a caller's input), and end on the event loop that started them. The SDK's live
`Span` is built for none of that: a lock per span, attribute limits and checks on every set,
event and link lists, a sampler call, a readable copy at the end. Here each span is a few
fields until it ends, then one tuple, the form in which spans cross to the export process
(`export_process.wire`), added to the outbox on the loop (span_outbox.py), with ids from the
tracer provider's id generator. The export process rebuilds the SDK's own finished-span
record from it; from there on everything is the SDK's and the OTLP exporter's.

Spans outside requests (a scheduled key refresh), where the sampler still decides span by
span, go through the SDK's tracer as before (otel.py).
"""

from __future__ import annotations

import time
from contextvars import ContextVar, Token

from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, StatusCode

from app.observability.export_process import Wired, wired_context
from app.observability.span_outbox import SpanOutbox
from app.observability.tracing import AttributeValue

_SERVER = SpanKind.SERVER.value
_INTERNAL = SpanKind.INTERNAL.value
_UNSET = StatusCode.UNSET.value
_ERROR = StatusCode.ERROR.value
_SAMPLED = 1  # the trace flags of every kept span


class KeptSpans:
    """Where a kept request's spans come from and go to: one per tracer provider."""

    def __init__(self, outbox: SpanOutbox, ids: IdGenerator, scope: InstrumentationScope) -> None:
        self.outbox = outbox
        self.ids = ids
        self.scope = (scope.name, scope.version, scope.schema_url)

    def request(self, name: str, parent: SpanContext | None) -> KeptSpan:
        """The request's span: a child of a trusted proxy's span when it sent one, else the
        root of a new trace."""
        if parent is not None and parent.is_valid:
            trace_id = parent.trace_id
            remote: Wired | None = wired_context(parent)
        else:
            trace_id, remote = self.ids.generate_trace_id(), None
        return KeptSpan(self, name, trace_id, remote, _SERVER, {})


_current: ContextVar[KeptSpan | None] = ContextVar("broker_kept_span", default=None)


def current() -> KeptSpan | None:
    """The kept request's innermost open span, if the current context is in one."""
    return _current.get()


class KeptSpan:
    """One span of a kept request: current for its block when entered, finished at exit."""

    __slots__ = (
        "_kept",
        "_token",
        "attributes",
        "kind",
        "name",
        "parent",
        "span_id",
        "start",
        "status",
        "trace_id",
    )

    def __init__(
        self,
        kept: KeptSpans,
        name: str,
        trace_id: int,
        parent: Wired | None,
        kind: int,
        attributes: dict[str, AttributeValue],
    ) -> None:
        self._kept = kept
        self.name = name
        self.trace_id = trace_id
        self.span_id = kept.ids.generate_span_id()
        self.parent = parent  # the parent's context, wired
        self.kind = kind
        self.attributes = attributes
        self.status = _UNSET
        self.start = time.time_ns()
        self._token: Token[KeptSpan | None] | None = None

    def child(self, name: str, attributes: dict[str, AttributeValue]) -> KeptSpan:
        """A span inside this one; its attributes a copy (a caller's dict is never added to)."""
        return KeptSpan(
            self._kept,
            name,
            self.trace_id,
            (self.trace_id, self.span_id, False, _SAMPLED, ()),
            _INTERNAL,
            dict(attributes),
        )

    def set_attributes(self, attributes: dict[str, AttributeValue]) -> None:
        self.attributes.update(attributes)

    def failed(self, exc: BaseException | None = None) -> None:
        """Marked an error; by the exception's type when there is one (its message may quote
        what it failed on)."""
        self.status = _ERROR
        if exc is not None:
            self.attributes["error.type"] = type(exc).__name__

    def __enter__(self) -> KeptSpan:
        self._token = _current.set(self)
        return self

    def __exit__(self, _: object, exc: BaseException | None, __: object) -> None:
        if exc is not None:
            self.failed(exc)
        if self._token is not None:
            _current.reset(self._token)
        self.end()

    def end(self) -> None:
        """Finished: its fields, as `export_process.wire` lays them out, to the outbox."""
        kept = self._kept
        kept.outbox.add(
            (
                self.name,
                (self.trace_id, self.span_id, False, _SAMPLED, ()),
                self.parent,
                self.kind,
                self.start,
                time.time_ns(),
                self.status,
                None,
                self.attributes,
                (),
                (),
                kept.scope,
            )
        )
