"""OpenTelemetry for `BROKER_OTEL=on`: the only module that imports its SDK and exporter.

Configured by the standard variables only: `OTEL_EXPORTER_OTLP_ENDPOINT` (or
`..._TRACES_ENDPOINT`), `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME`,
`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` / `_ARG` and `OTEL_BSP_*`, read by the SDK.

- Spans go out from an export process of the broker's (export_process.py), batched on the
  event loop (span_outbox.py) and written to it without waiting; there the SDK's batch
  processor queues them (dropped when full) for the OTLP exporter, so a collector that is
  down, slow or refusing costs a request nothing. A failing export is logged once per
  incident, and its recovery once.
- The tracer is the broker's own (no global provider is set), and nothing is injected into
  outgoing calls: VideoDB and identity providers, third parties, never see a trace header.
- An incoming `traceparent` continues a trace only from a peer in `BROKER_TRUSTED_PROXIES`;
  from anyone else the request starts a trace of its own.
- Exceptions are recorded by type, never by message, and the request span carries the
  route template, never the path (a path is whatever the client sent).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import math
import os
import random
from collections.abc import Awaitable, Sequence
from contextlib import AbstractContextManager

import structlog
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    StaticSampler,
    TraceIdRatioBased,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import __version__
from app.observability import kept_spans, tracing
from app.observability.export_process import COLLECTOR_FAILED, ExportProcess, Report
from app.observability.span_outbox import Shipper, SpanOutbox
from app.urls import host_of

DEFAULT_SERVICE_NAME = "videodb-token-broker"
_SDK_LOGGERS = ("opentelemetry.exporter", "opentelemetry.sdk")
DEFAULT_EXPORT_TIMEOUT = 10.0  # seconds: the OTLP exporter's own default
# The most shutdown waits for queued spans. In Kubernetes a pod has terminationGracePeriod
# (40 s) for the preStop sleep (5 s), draining (up to 30 s) and this; past it, it is killed.
MAX_SHUTDOWN_FLUSH_SECONDS = 5.0

log = structlog.get_logger(logger_name=__name__)
_draw = random.getrandbits  # 64 random bits decide a new trace, as the sampler would


class _Child:
    """A span current for a block: what `start_as_current_span` does, without its two
    generator-based context managers (a kept request enters a few of these)."""

    __slots__ = ("_attributes", "_name", "_span", "_token", "_tracer")

    def __init__(
        self, tracer: Tracer, name: str, attributes: dict[str, tracing.AttributeValue]
    ) -> None:
        self._tracer = tracer
        self._name = name
        self._attributes = attributes

    def __enter__(self) -> trace.Span:
        span = self._span = self._tracer.start_span(self._name, attributes=self._attributes)
        self._token = otel_context.attach(trace.set_span_in_context(span))
        return span

    def __exit__(self, _: object, exc: BaseException | None, __: object) -> None:
        span = self._span
        try:
            if exc is not None:
                _failed(span, exc)
        finally:
            otel_context.detach(self._token)
            span.end()


class _Recorder:
    """The broker's spans on its own tracer; see tracing.py for the seam."""

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    def span(
        self, name: str, attributes: dict[str, tracing.AttributeValue]
    ) -> AbstractContextManager[tracing.Annotatable]:
        sampled = tracing.request_sampled()
        if sampled:  # in a kept request: built finished (kept_spans.py)
            kept = kept_spans.current()
            if kept is not None:
                return kept.child(name, attributes)
        elif sampled is None:  # outside requests: the sampler decided a root
            parent = trace.get_current_span()
            if parent.get_span_context().is_valid and not parent.is_recording():
                # Inside a trace the sampler dropped: its children would be dropped too (the
                # samplers are parent-based), so none is built (what that saves an unsampled
                # request: docs/performance.md, "Tracing").
                return tracing.NO_SPAN
        return _Child(self._tracer, name, attributes)

    def annotate(self, attributes: dict[str, tracing.AttributeValue]) -> None:
        kept = kept_spans.current() if tracing.request_sampled() else None
        if kept is not None:
            kept.set_attributes(attributes)
        else:
            trace.get_current_span().set_attributes(attributes)


def _failed(span: trace.Span, exc: BaseException) -> None:
    """An error by its type: an exception's message may quote what it failed on."""
    span.set_status(Status(StatusCode.ERROR))
    span.set_attribute("error.type", type(exc).__name__)


class _OncePerIncident:
    """The export process's reports, failures logged once when they start and once when
    they end."""

    def __init__(self, collector: str) -> None:
        self._collector = collector
        self._failing = False

    def __call__(self, sent: bool, spans: int, reason: str = COLLECTOR_FAILED) -> None:
        if not sent and not self._failing:
            self._failing = True
            log.warning(
                "trace_export_failed",
                collector=self._collector,
                reason=reason,
                spans_dropped=spans,
                effect="traces are lost until the collector answers; requests are unaffected",
            )
        elif sent and self._failing:
            self._failing = False
            log.info("trace_export_recovered", collector=self._collector)


def export_timeout_seconds() -> float:
    """The exporter's timeout for one export, read as the exporter reads it:
    OTEL_EXPORTER_OTLP_TRACES_TIMEOUT, else OTEL_EXPORTER_OTLP_TIMEOUT, seconds; 10 if unset
    or not a positive number."""
    raw = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TIMEOUT"
    )
    try:
        seconds = float(raw) if raw else DEFAULT_EXPORT_TIMEOUT
    except ValueError:
        seconds = DEFAULT_EXPORT_TIMEOUT
    if not 0 < seconds < math.inf:
        seconds = DEFAULT_EXPORT_TIMEOUT
    return seconds


def shutdown_flush_seconds() -> float:
    """How long shutdown waits for queued spans: the exporter's timeout, 5 s at most.

    The SDK bounds each export by that timeout, not the flush: with an export in flight and
    more batches queued, a collector that accepts and never answers would hold the exit for
    a timeout per batch; the export process is killed at this deadline instead.
    """
    return min(export_timeout_seconds(), MAX_SHUTDOWN_FLUSH_SECONDS)


def _export_process(resource: Resource, report: Report) -> Shipper:
    """OpenTelemetry's OTLP exporter, run in a process of its own (export_process.py)."""
    return ExportProcess(resource, export_timeout_seconds(), report)


def _collector() -> str:
    """Where spans go, by host only (an endpoint URL may carry credentials)."""
    url = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318"
    )
    return host_of(url) or "unknown"


class Tracing:
    """The tracer provider of one app: built with it, shut down with its lifespan."""

    def __init__(self, trusted_proxies: Sequence[str]) -> None:
        attributes: dict[str, str] = {SERVICE_VERSION: __version__}
        if not os.environ.get("OTEL_SERVICE_NAME"):
            attributes[SERVICE_NAME] = DEFAULT_SERVICE_NAME  # else the variable names it
        # The sampler (OTEL_TRACES_SAMPLER) and batch settings (OTEL_BSP_*) come from the
        # environment, read by the SDK itself.
        # The sampler the environment configures decides each request before anything is
        # built (TracingMiddleware); the provider then samples what was decided.
        self.sampler = TracerProvider(shutdown_on_exit=False).sampler
        self.bound = _ratio_bound(self.sampler)  # None: the sampler is asked each time
        resource = Resource.create(attributes)
        self.provider = TracerProvider(resource=resource, sampler=_Decided(self.sampler))
        self.outbox = SpanOutbox(_export_process(resource, _OncePerIncident(_collector())))
        self.provider.add_span_processor(self.outbox)
        self.tracer = self.provider.get_tracer(DEFAULT_SERVICE_NAME, __version__)
        self.kept = kept_spans.KeptSpans(
            self.outbox,
            self.provider.id_generator,
            InstrumentationScope(DEFAULT_SERVICE_NAME, __version__),
        )
        self.flush_seconds = shutdown_flush_seconds()
        self.trusted = tuple(ipaddress.ip_network(entry, strict=False) for entry in trusted_proxies)
        for name in _SDK_LOGGERS:  # _OncePerIncident says it once; they would say it always
            logging.getLogger(name).setLevel(logging.CRITICAL)

    def start(self) -> None:
        """Record the broker's spans from now on. Called from the lifespan, on the loop
        spans are batched on: the background work it starts (a scheduled key refresh) has
        its spans decided by the sampler."""
        self.outbox.bind(asyncio.get_running_loop())
        tracing.install(_Recorder(self.tracer))
        tracing.decided(None)  # the lifespan's context, and the tasks started from it

    async def stop(self) -> None:
        """Stop recording; send what is queued, for `flush_seconds` at most: past that the
        export process is killed, and what it still held is lost."""
        tracing.install(None)
        if not await self.outbox.close(self.flush_seconds):
            log.warning(
                "trace_flush_cut_short",
                collector=_collector(),
                waited_s=self.flush_seconds,
                effect="spans not yet exported are dropped; the broker stops on time",
            )

    def trusts(self, scope: Scope) -> bool:
        """Whether the connection's own peer (before any proxy header) is a trusted proxy."""
        client = scope.get("client")
        if not client or not self.trusted:
            return False
        return _trusted(client[0], self.trusted)

    def sampled(self, parent: Context | None) -> bool:
        """Whether to trace this request: a trusted proxy's sampled flag when it sent one,
        else the configured sampler's decision for a new trace."""
        if parent is not None:
            context = trace.get_current_span(parent).get_span_context()
            if context.is_valid:
                return context.trace_flags.sampled
        bound = self.bound
        if bound is not None:  # what the sampler decides on a random trace id's low half
            return _draw(64) < bound
        trace_id = random.getrandbits(128) or 1
        decision = self.sampler.should_sample(Context(), trace_id, "request").decision
        return decision is Decision.RECORD_AND_SAMPLE


def _ratio_bound(sampler: Sampler) -> int | None:
    """What decides a new trace, as a bound on 64 random bits, when the configured sampler
    (or a parent-based one's root) is a ratio (`traceidratio`) or the same answer for every
    trace (`always_on`, 2**64; `always_off`, 0); else None: the sampler is asked."""
    root = getattr(sampler, "_root", sampler) if isinstance(sampler, ParentBased) else sampler
    if isinstance(root, TraceIdRatioBased):
        return root.bound
    if isinstance(root, StaticSampler):
        kept = root.should_sample(Context(), 1, "request").decision
        return 1 << 64 if kept is Decision.RECORD_AND_SAMPLE else 0
    return None


class _Decided(Sampler):
    """The configured sampler, except inside a request already decided to be sampled: its
    spans, the request's own and its children, are kept without asking again (what the
    parent-based samplers would say of its children)."""

    def __init__(self, inner: Sampler) -> None:
        self._inner = inner

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if tracing.request_sampled():
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)
        return self._inner.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"Decided({self._inner.get_description()})"


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=1024)
def _trusted(
    host: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
) -> bool:
    """Whether a peer address lies in a trusted network (a proxy's few addresses, cached)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in networks)


_PROPAGATOR = TraceContextTextMapPropagator()


def _parent(scope: Scope, tracing_: Tracing) -> Context | None:
    """The caller's trace context, from a trusted proxy only; else a new trace."""
    if not tracing_.trusts(scope):
        return None
    carrier: dict[str, str] = {}
    for name, value in scope.get("headers", ()):
        if name in (b"traceparent", b"tracestate"):
            carrier[name.decode()] = value.decode("latin-1")
    return _PROPAGATOR.extract(carrier) if carrier else None


class TracingMiddleware:
    """The request span, outermost: it sees the connection's real peer, before any proxy
    header is believed, and every layer inside runs within it. Probes and scrapes
    (`quiet_paths`) get none: a trace every few seconds per pod would bury the real ones."""

    def __init__(
        self, app: ASGIApp, *, tracing_: Tracing, quiet_paths: frozenset[str] = frozenset()
    ) -> None:
        self.app = app
        self.tracing = tracing_
        self.quiet_paths = quiet_paths
        # A request no trusted proxy can speak for is decided by one draw, kept below this
        # bound (see __call__); None when a trusted proxy's flag or the sampler decides.
        self._keep_below = tracing_.bound if not tracing_.trusted else None

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """The inner app's own coroutine for a request dropped by the sampler's draw: no
        coroutine of this layer's, no look-up of the path first. Deciding comes before
        everything else, because it is the answer for nearly every request
        (docs/performance.md, "Eighth pass")."""
        bound = self._keep_below
        if bound is None:  # a trusted proxy may speak for it, or the sampler is asked
            return self._decided(scope, receive, send, None)
        if _draw(64) < bound:
            return self._decided(scope, receive, send, True)
        if tracing.request_sampled() is False:  # a request's own context says so already
            return self.app(scope, receive, send)
        return self._decided(scope, receive, send, False)

    async def _decided(
        self, scope: Scope, receive: Receive, send: Send, sampled: bool | None
    ) -> None:
        """The request as `sampled` says, or when None, as a trusted proxy's flag or the
        sampler decides it. Probes, scrapes and other scopes pass through unrecorded."""
        if scope["type"] != "http" or scope["path"] in self.quiet_paths:
            await self.app(scope, receive, send)
            return
        parent = _parent(scope, self.tracing) if self.tracing.trusted else None
        if sampled is None:
            sampled = self.tracing.sampled(parent)
        if not sampled and tracing.request_sampled() is False:
            await self.app(scope, receive, send)  # a request's own context says so already
            return
        token = tracing.decided(sampled)
        try:
            if sampled:
                await self._traced(scope, receive, send, parent)
            else:
                await self.app(scope, receive, send)
        finally:
            tracing.reset(token)

    async def _traced(
        self, scope: Scope, receive: Receive, send: Send, parent: Context | None
    ) -> None:
        method = scope["method"]
        status = 500
        request_id = ""

        async def send_traced(message: Message) -> None:
            nonlocal status, request_id
            if message["type"] == "http.response.start":
                status = int(message["status"])  # a plain int, whatever the app sent
                for name, value in message.get("headers", ()):
                    if name.lower() == b"x-request-id":
                        request_id = value.decode("latin-1")
            await send(message)

        remote = None if parent is None else trace.get_current_span(parent).get_span_context()
        with self.tracing.kept.request(f"{method} request", remote) as span:
            try:
                await self.app(scope, receive, send_traced)
            finally:
                route = getattr(scope.get("route"), "path", None)
                if route:
                    span.name = f"{method} {route}"
                span.set_attributes(
                    {
                        "http.request.method": method,
                        "http.route": route or "unmatched",
                        "http.response.status_code": status,
                        "broker.request_id": request_id,
                    }
                )
                if status >= 500:
                    span.failed()
