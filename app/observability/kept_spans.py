"""The spans of a request the sampler kept, built as the SDK's finished spans directly.

A kept request's spans are known to be sampled before the first is started, carry only the
broker's own attributes (names, labels, counts, fingerprints: `tracing.AttributeValue`, typed
and never a caller's input), and end on the event loop that started them. The SDK's live
`Span` is built for none of that: a lock per span, attribute limits and checks on every set,
event and link lists, a sampler call, a readable copy at the end; three of them cost a kept
cache hit about 100 µs (docs/performance.md, "Third pass: the export in a process of its
own, a kept request's spans built finished"). Here each span is a few fields until it ends,
then one `ReadableSpan`, the SDK's own record of a finished span, handed to the same batch
processor the tracer feeds, with ids from the tracer provider's id generator. From there on
everything is the SDK's and the OTLP exporter's, unchanged.

Spans outside requests (a scheduled key refresh), where the sampler still decides span by
span, go through the SDK's tracer as before (otel.py).
"""

from __future__ import annotations

import time
from contextvars import ContextVar, Token

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from app.observability.tracing import AttributeValue

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_UNSET = Status(StatusCode.UNSET)
_ERROR = Status(StatusCode.ERROR)


class KeptSpans:
    """Where a kept request's spans come from and go to: one per tracer provider."""

    def __init__(
        self,
        processor: SpanProcessor,
        ids: IdGenerator,
        resource: Resource,
        scope: InstrumentationScope,
    ) -> None:
        self.processor = processor
        self.ids = ids
        self.resource = resource
        self.scope = scope

    def request(self, name: str, parent: SpanContext | None) -> KeptSpan:
        """The request's span: a child of a trusted proxy's span when it sent one, else the
        root of a new trace."""
        if parent is not None and parent.is_valid:
            trace_id = parent.trace_id
        else:
            trace_id, parent = self.ids.generate_trace_id(), None
        return KeptSpan(self, name, trace_id, parent, SpanKind.SERVER, {})


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
        "context",
        "kind",
        "name",
        "parent",
        "start",
        "status",
    )

    def __init__(
        self,
        kept: KeptSpans,
        name: str,
        trace_id: int,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, AttributeValue],
    ) -> None:
        self._kept = kept
        self.name = name
        self.context = SpanContext(
            trace_id, kept.ids.generate_span_id(), is_remote=False, trace_flags=_SAMPLED
        )
        self.parent = parent
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
            self.context.trace_id,
            self.context,
            SpanKind.INTERNAL,
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
        """Finished: the SDK's record of it goes to the batch processor."""
        kept = self._kept
        kept.processor.on_end(
            ReadableSpan(
                name=self.name,
                context=self.context,
                parent=self.parent,
                resource=kept.resource,
                attributes=self.attributes,
                kind=self.kind,
                status=self.status,
                start_time=self.start,
                end_time=time.time_ns(),
                instrumentation_scope=kept.scope,
            )
        )
