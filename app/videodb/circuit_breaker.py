"""A circuit breaker for VideoDB: open after repeated failures, one probe when half-open.

Hand-written on purpose (about fifty lines): the asyncio breakers on PyPI (purgatory,
aiobreaker) let every request through while half-open, and the contract wants exactly one
probe, so that an outage costs VideoDB one call per reset interval, not one per user request.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Literal

import structlog

from app.errors import UpstreamTimeout, UpstreamUnavailable, UpstreamUnusable
from app.observability import metrics

State = Literal["closed", "open", "half_open"]
_GAUGE = {"closed": 0, "half_open": 1, "open": 2}

log = structlog.get_logger(logger_name=__name__)


class CircuitOpen(UpstreamUnavailable):
    """Refused at once: the circuit is open."""


class CircuitBreaker:
    """Counts consecutive upstream failures (unavailable, timed out, or answering unusably)."""

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probe_in_flight = False
        metrics.CIRCUIT_STATE.set(0)

    @property
    def state(self) -> State:
        """closed, open, or half_open (the reset timeout has passed; a probe may go)."""
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at < self.reset_timeout:
            return "open"
        return "half_open"

    def _retry_after(self) -> int:
        if self._opened_at is None:
            return 1
        left = self.reset_timeout - (self._clock() - self._opened_at)
        return max(1, math.ceil(left))

    @asynccontextmanager
    async def guard(self) -> AsyncIterator[None]:
        """Run one upstream call under the breaker, or raise CircuitOpen at once."""
        state = self.state
        if state == "open" or (state == "half_open" and self._probe_in_flight):
            raise CircuitOpen(
                "VideoDB is failing; the broker is holding calls back for a moment.",
                self._retry_after(),
            )
        probing = state == "half_open"
        if probing:
            self._probe_in_flight = True
            metrics.CIRCUIT_STATE.set(_GAUGE["half_open"])
        try:
            yield
        except (UpstreamUnavailable, UpstreamTimeout, UpstreamUnusable):
            self._record_failure(probing)
            raise
        except BaseException:
            if probing:
                self._probe_in_flight = False
            raise
        else:
            self._record_success()

    def _record_failure(self, probing: bool) -> None:
        self._failures += 1
        if probing or self._failures >= self.failure_threshold:
            if self._opened_at is None or probing:
                log.warning("circuit_opened", failures=self._failures)
            self._opened_at = self._clock()
            metrics.CIRCUIT_STATE.set(_GAUGE["open"])
        self._probe_in_flight = False

    def _record_success(self) -> None:
        if self._opened_at is not None:
            log.info("circuit_closed")
        self._failures = 0
        self._opened_at = None
        self._probe_in_flight = False
        metrics.CIRCUIT_STATE.set(_GAUGE["closed"])
