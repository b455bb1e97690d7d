"""The optional Redis shared by replicas, and its health: degrade, log once, recover."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import structlog
from redis.exceptions import OutOfMemoryError, ReadOnlyError, RedisError, ResponseError

from app.config.redis import RedisTarget
from app.infra.redis_clients import MAX_CONNECTIONS, RedisClient, close, connect
from app.observability import metrics, tracing

# How long Redis may take to answer, counted only while the event loop runs on time (see
# patient_timeout): a broker busy with a burst of requests is not a slow Redis.
REDIS_TIMEOUT_SECONDS = 0.25
# However busy the loop, no Redis call waits longer than this (also redis-py's own socket
# timeouts, a backstop under ours).
REDIS_HARD_TIMEOUT_SECONDS = 2.0
TICKS_PER_TIMEOUT = 5
RETRY_AFTER_FAILURE_SECONDS = 2.0
COMMAND_ERROR_LOG_INTERVAL_SECONDS = 60.0

T = TypeVar("T")
log = structlog.get_logger(logger_name=__name__)


@asynccontextmanager
async def patient_timeout(seconds: float, hard_limit: float) -> AsyncIterator[None]:
    """TimeoutError once `seconds` have passed with the event loop running on time.

    A tick every seconds/TICKS_PER_TIMEOUT counts one tick's worth, however late it ran: a
    loop busy with a burst delays every tick, and the wait stretches with it, so a Redis
    that answered is not declared down because the broker had no time to read the answer.
    On an idle loop this is an ordinary `seconds` timeout; `hard_limit` bounds any wait.
    """
    loop = asyncio.get_running_loop()
    step = seconds / TICKS_PER_TIMEOUT
    async with asyncio.timeout(hard_limit) as deadline:
        ticks: list[asyncio.TimerHandle] = []

        def tick() -> None:
            if len(ticks) >= TICKS_PER_TIMEOUT:
                deadline.reschedule(loop.time())
            else:
                ticks.append(loop.call_later(step, tick))

        tick()
        try:
            yield
        finally:
            ticks[-1].cancel()


def _command_refused(exc: BaseException) -> bool:
    """Redis answered, with an error for this one command (a key holding garbage, a script
    refusing its input): Redis is up, and only this call falls back."""
    return isinstance(exc, ResponseError) and not isinstance(
        exc,
        ReadOnlyError | OutOfMemoryError,  # a server that cannot serve at all
    )


class SharedState:
    """A Redis client with a short timeout; while Redis is down, callers fall back locally.

    One client per process, shared by the token cache, the rate limits and live capture.
    Callers queue for one of its connections (within the timeouts above) instead of failing
    at once, as redis-py's default pool does when full, which would make a burst of
    concurrent requests look like a Redis outage. How far 64 connections go:
    docs/performance.md.
    """

    def __init__(self, target: RedisTarget) -> None:
        self.target = target
        self.client: RedisClient = connect(target, REDIS_HARD_TIMEOUT_SECONDS)
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._command_error_logged_at = float("-inf")
        # one slot per connection: redis-py's pool never makes a timed call wait
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        metrics.REDIS_UP.set(1)

    @property
    def available(self) -> bool:
        """False while an incident is on and the next probe is not yet due."""
        return self._down_since is None or time.monotonic() >= self._retry_at

    @property
    def healthy(self) -> bool:
        """No incident open."""
        return self._down_since is None

    async def run(
        self, operation: Callable[[], Awaitable[T]], command: str = "command"
    ) -> T | None:
        """Run a Redis operation; None (and an incident) if Redis fails or is skipped.
        `command` names its span when tracing is on ("GET", "SET", "LOCK"...).

        Calls queue for one of the pool's connections here, untimed: that wait is the broker's
        own (a burst), never Redis's. Only the call itself is timed. During an outage the
        queue drains at once: each call finds the incident open when its turn comes.
        """
        if not self.available:
            return None
        async with self._slots:
            if not self.available:
                return None  # an incident opened while this call waited its turn
            try:
                with tracing.span(f"redis {command}", **{"db.system.name": "redis"}):
                    async with patient_timeout(REDIS_TIMEOUT_SECONDS, REDIS_HARD_TIMEOUT_SECONDS):
                        result = await operation()
            except (RedisError, OSError, TimeoutError) as exc:
                if _command_refused(exc):
                    self._succeeded()
                    metrics.REDIS_COMMANDS_REFUSED.labels(command).inc()
                    self._command_refused(exc)
                else:
                    self._failed(exc)
                return None
        self._succeeded()
        return result

    def _command_refused(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._command_error_logged_at >= COMMAND_ERROR_LOG_INTERVAL_SECONDS:
            self._command_error_logged_at = now
            log.warning(
                "redis_command_refused",
                error_type=type(exc).__name__,
                fallback="in-process for this call",
            )

    def _failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            metrics.REDIS_UP.set(0)
            log.warning(
                "redis_unavailable",
                error_type=type(exc).__name__,
                fallback="in-process cache and limits",
            )
        self._retry_at = now + RETRY_AFTER_FAILURE_SECONDS

    def _succeeded(self) -> None:
        if self._down_since is not None:
            log.info("redis_recovered", outage_s=round(time.monotonic() - self._down_since, 1))
            self._down_since = None
            metrics.REDIS_UP.set(1)

    async def ping(self) -> bool:
        """Probe Redis now (used by readiness and start-up)."""
        self._retry_at = 0.0
        return bool(await self.run(self.client.ping, "PING"))

    async def close(self) -> None:
        await close(self.client)
