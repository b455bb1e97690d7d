"""VideoDB calls with a bounded, jittered retry inside the request's deadline, and a breaker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)

from app.errors import (
    NotFound,
    UpstreamKeyRefused,
    UpstreamRefused,
    UpstreamTimeout,
    UpstreamUnavailable,
    UpstreamUnusable,
)
from app.observability import metrics, tracing
from app.videodb.answers import CaptureSession, MintedToken
from app.videodb.circuit_breaker import CircuitBreaker, CircuitOpen
from app.videodb.client import VideoDBClient

MAX_ATTEMPTS = 3
MAX_RETRY_AFTER_WAITED = 2.0  # seconds; VideoDB asking for a longer pause ends the retries
_backoff = wait_random_exponential(multiplier=0.1, max=1.0)

T = TypeVar("T")
log = structlog.get_logger(logger_name=__name__)


def _retryable(exc: BaseException) -> bool:
    """What VideoDB could not serve (unreachable, 5xx, 429, a short Retry-After)."""
    if isinstance(exc, CircuitOpen) or not isinstance(exc, UpstreamUnavailable):
        return False
    return exc.upstream_hint is None or exc.upstream_hint <= MAX_RETRY_AFTER_WAITED


def _retryable_unsent(exc: BaseException) -> bool:
    """For a call that is not safe to repeat: only a request that never left."""
    return _retryable(exc) and not getattr(exc, "reached", True)


def _wait(state: RetryCallState) -> float:
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, UpstreamUnavailable) and exc.upstream_hint is not None:
        return float(exc.upstream_hint)
    return float(_backoff(state))


def _outcome(exc: BaseException | None) -> str:
    if exc is None:
        return "ok"
    if isinstance(exc, CircuitOpen):
        return "circuit_open"
    if isinstance(exc, UpstreamTimeout):
        return "timeout"
    if isinstance(exc, UpstreamUnavailable):
        return "unavailable"
    if isinstance(exc, UpstreamUnusable):
        return "unusable"
    if isinstance(exc, UpstreamKeyRefused):
        return "key_refused"  # 401/403: the key itself (on the token call, proof it is bad)
    if isinstance(exc, UpstreamRefused):
        return "refused"  # another 4xx: what one caller asked for, never the key
    if isinstance(exc, NotFound):
        return "not_found"
    return "cancelled" if isinstance(exc, asyncio.CancelledError) else "other"


class ResilientVideoDB:
    """The VideoDB client behind retries and a circuit breaker."""

    def __init__(self, client: VideoDBClient, breaker: CircuitBreaker, deadline: float) -> None:
        self._client = client
        self.breaker = breaker
        self._deadline = deadline

    async def mint(self, user_id: str, expires_in: int) -> MintedToken:
        """One token, or the last error once retries or the deadline run out.

        Minting a token changes nothing at VideoDB but the token handed out, so repeating
        one that may have reached it is safe.
        """
        return await self._with_retries(
            "token", lambda budget: self._client.mint(user_id, expires_in, budget), _retryable
        )

    async def create_capture_session(self, payload: dict[str, object]) -> CaptureSession:
        """Create a capture session. Not idempotent: repeated only when the request never
        left (a refused connection), never once VideoDB may have received it."""
        return await self._with_retries(
            "create_capture_session",
            lambda budget: self._client.create_capture_session(payload, budget),
            _retryable_unsent,
        )

    async def get_capture_session(self, session_id: str) -> dict[str, object]:
        """VideoDB's record of a capture session (a read: safe to repeat)."""
        return await self._with_retries(
            "get_capture_session",
            lambda budget: self._client.get_capture_session(session_id, budget),
            _retryable,
        )

    async def websocket_url(self) -> str:
        """A new VideoDB WebSocket URL (a read: safe to repeat)."""
        return await self._with_retries(
            "websocket", lambda budget: self._client.websocket_url(budget), _retryable
        )

    async def start_step(self, path: str, payload: dict[str, object]) -> dict[str, object]:
        """Start an AI step: repeated only when the request never left."""
        return await self._with_retries(
            "start_step",
            lambda budget: self._client.start_step(path, payload, budget),
            _retryable_unsent,
        )

    async def export_session(self, session_id: str) -> dict[str, object]:
        """Export, or poll the export (calling again polls): repeated only when never sent."""
        return await self._with_retries(
            "export_capture_session",
            lambda budget: self._client.export_session(session_id, budget),
            _retryable_unsent,
        )

    async def _with_retries(
        self,
        operation: str,
        call: Callable[[float], Awaitable[T]],
        retryable: Callable[[BaseException], bool],
    ) -> T:
        """Retried after a jittered backoff or VideoDB's own `Retry-After` of up to 2 s, while
        `retryable` says so; every attempt and every pause inside the request's one deadline."""
        ends_at = time.monotonic() + self._deadline
        # Nearly every call succeeds at once: the first attempt is made without tenacity,
        # whose loop costs more CPU than the attempt's own bookkeeping (docs/performance.md).
        try:
            return await self._attempt(operation, call, self._deadline, 1)
        except Exception as exc:
            if not retryable(exc):
                raise
            first = exc
        retrying = AsyncRetrying(
            retry=retry_if_exception(retryable),
            wait=_wait,
            stop=stop_after_attempt(MAX_ATTEMPTS) | stop_before_delay(ends_at - time.monotonic()),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if attempt.retry_state.attempt_number == 1:
                    raise first  # made above: tenacity decides from it whether to go on
                left = ends_at - time.monotonic()
                if left <= 0:
                    raise UpstreamTimeout("VideoDB did not answer in time; try again shortly.")
                number = attempt.retry_state.attempt_number
                result = await self._attempt(operation, call, left, number)
        return result

    async def _attempt(
        self, operation: str, call: Callable[[float], Awaitable[T]], budget: float, number: int
    ) -> T:
        started = time.perf_counter()
        error: BaseException | None = None
        attributes: dict[str, tracing.AttributeValue] = {
            "broker.videodb.operation": operation,
            "broker.retry.attempt": number,
            "broker.circuit.state": self.breaker.state,
        }
        with tracing.span(f"videodb {operation}", **attributes):
            try:
                async with self.breaker.guard():
                    return await call(budget)
            except BaseException as exc:  # counted by what it was, never as "ok"
                error = exc
                raise
            finally:
                outcome = _outcome(error)
                tracing.annotate(**{"broker.videodb.outcome": outcome})
                if not isinstance(error, CircuitOpen):
                    elapsed = time.perf_counter() - started
                    metrics.UPSTREAM_LATENCY.labels(operation).observe(elapsed)
                metrics.UPSTREAM_OUTCOMES.labels(operation, outcome).inc()
