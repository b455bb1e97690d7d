"""The spans the broker records, through a seam that builds nothing while tracing is off.

Code across the broker calls `span(...)` and `annotate(...)`. With `BROKER_OTEL` off (the
default) they do nothing (every span is one shared null span) and nothing of OpenTelemetry's
SDK is loaded; `app/observability/otel.py`, imported only when it is on, installs a tracer
here. Attribute values are always ours: names, labels, counts, fingerprints. Never a key, a
JWT, an `st-` token, a URL with a secret or a raw user id (tests/integration/test_tracing.py
searches every exported byte).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from contextvars import ContextVar, Token
from typing import Protocol, TypeVar

AttributeValue = str | bool | int | float
T = TypeVar("T")


class Annotatable(Protocol):
    """A span as the block inside it sees it: attributes can be added."""

    def set_attributes(self, attributes: dict[str, AttributeValue]) -> None: ...


class Recorder(Protocol):
    """What `otel.py` installs: starts a span as the current one, annotates the current one."""

    def span(
        self, name: str, attributes: dict[str, AttributeValue]
    ) -> AbstractContextManager[Annotatable]: ...

    def annotate(self, attributes: dict[str, AttributeValue]) -> None: ...


class _NoSpan:
    """The span of tracing off: entering, leaving and annotating it do nothing."""

    __slots__ = ()

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def set_attributes(self, attributes: dict[str, AttributeValue]) -> None:
        return None


NO_SPAN = _NoSpan()
_recorder: Recorder | None = None
# Whether spans are recorded here. True in a request the sampler kept, decided before
# anything was built: its spans are recorded without asking the sampler again. None in the
# broker's own background work, started from the lifespan once tracing is on (a scheduled key
# refresh): the sampler decides span by span. False, the default, anywhere else, which is in
# a request the sampler dropped (a server runs each request in a context of its own, not the
# lifespan's): no span, no attribute, no context of OpenTelemetry's, for it or for anything
# it starts, and nothing to set for it.
_request_sampled: ContextVar[bool | None] = ContextVar("broker_request_sampled", default=False)


def install(recorder: Recorder | None) -> None:
    """Switch recording on (a recorder) or off (None); the lifespan does both."""
    global _recorder
    _recorder = recorder


def decided(sampled: bool | None) -> Token[bool | None]:
    """Mark the current request as kept (True) or dropped (False) by the sampler, or the
    current context as background work whose spans the sampler decides (None); reset with the
    token."""
    return _request_sampled.set(sampled)


def request_sampled() -> bool | None:
    """The current request's sampling decision; None in background work."""
    return _request_sampled.get()


def reset(token: Token[bool | None]) -> None:
    """The request is over."""
    _request_sampled.reset(token)


def span(name: str, **attributes: AttributeValue) -> AbstractContextManager[Annotatable]:
    """A child span of the current one for the block, or nothing while tracing is off or
    the request was not sampled."""
    recorder = _recorder
    if recorder is None or _request_sampled.get() is False:
        return NO_SPAN
    return recorder.span(name, attributes)


def annotate(**attributes: AttributeValue) -> None:
    """Add attributes to the current span (the request's, or a child's)."""
    recorder = _recorder
    if recorder is not None and _request_sampled.get() is not False:
        recorder.annotate(attributes)


def traced(
    name: str,
    work: Awaitable[T],
    outcome: Callable[[T], dict[str, AttributeValue]],
    attributes: dict[str, AttributeValue] | None = None,
) -> Awaitable[T]:
    """`work` in a span annotated with `outcome(result)`; while tracing is off or the request
    was not sampled, `work` itself, without even the null span: the seam for the calls every
    cache hit makes (docs/performance.md)."""
    recorder = _recorder
    if recorder is None or _request_sampled.get() is False:
        return work
    return _recorded(recorder, name, work, outcome, attributes or {})


async def _recorded(
    recorder: Recorder,
    name: str,
    work: Awaitable[T],
    outcome: Callable[[T], dict[str, AttributeValue]],
    attributes: dict[str, AttributeValue],
) -> T:
    with recorder.span(name, attributes) as span:
        result = await work
        span.set_attributes(outcome(result))
        return result
