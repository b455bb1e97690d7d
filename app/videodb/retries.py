"""VideoDB calls with a bounded, jittered retry inside the request's deadline, and a breaker."""

from __future__ import annotations

import asyncio
import time

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
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    UpstreamUnusable,
)
from app.observability import metrics
from app.videodb.circuit_breaker import CircuitBreaker, CircuitOpen
from app.videodb.client import MintedToken, VideoDBClient

MAX_ATTEMPTS = 3
MAX_RETRY_AFTER_WAITED = 2.0  # seconds; VideoDB asking for a longer pause ends the retries
_backoff = wait_random_exponential(multiplier=0.1, max=1.0)

log = structlog.get_logger(logger_name=__name__)


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, CircuitOpen) or not isinstance(exc, UpstreamUnavailable):
        return False
    return exc.upstream_hint is None or exc.upstream_hint <= MAX_RETRY_AFTER_WAITED


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
    if isinstance(exc, UpstreamError):
        return "error"
    return "cancelled" if isinstance(exc, asyncio.CancelledError) else "other"


class ResilientVideoDB:
    """The VideoDB client behind retries and a circuit breaker."""

    def __init__(self, client: VideoDBClient, breaker: CircuitBreaker, deadline: float) -> None:
        self._client = client
        self.breaker = breaker
        self._deadline = deadline

    async def mint(self, user_id: str, expires_in: int) -> MintedToken:
        """One token, or the last error once retries or the deadline run out.

        Retried: what VideoDB could not serve (unreachable, 5xx, 429), after a jittered
        backoff or its own `Retry-After` of up to 2 s. Minting a token changes nothing at
        VideoDB but the token handed out, so repeating one that may have reached it is safe.
        Every attempt and every pause lies inside the request's one deadline.
        """
        ends_at = time.monotonic() + self._deadline
        retrying = AsyncRetrying(
            retry=retry_if_exception(_retryable),
            wait=_wait,
            stop=stop_after_attempt(MAX_ATTEMPTS) | stop_before_delay(self._deadline),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                left = ends_at - time.monotonic()
                if left <= 0:
                    raise UpstreamTimeout("VideoDB did not answer in time; try again shortly.")
                minted = await self._attempt(user_id, expires_in, left)
        return minted

    async def _attempt(self, user_id: str, expires_in: int, budget: float) -> MintedToken:
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            async with self.breaker.guard():
                return await self._client.mint(user_id, expires_in, budget=budget)
        except BaseException as exc:  # counted by what it was, never as "ok"
            error = exc
            raise
        finally:
            if not isinstance(error, CircuitOpen):
                metrics.UPSTREAM_LATENCY.observe(time.perf_counter() - started)
            metrics.UPSTREAM_OUTCOMES.labels(_outcome(error)).inc()
