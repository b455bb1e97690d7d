"""The optional Redis shared by replicas, and its health: degrade, log once, recover."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as redis
import structlog
from limits.errors import StorageError
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from app import metrics

REDIS_TIMEOUT_SECONDS = 0.25
# One pool per process, shared by the token cache and the rate limits. A full pool makes
# callers queue for a connection instead of failing at once, as redis-py's default pool does
# past 100 connections: a burst of concurrent requests used to look like a Redis outage.
# 64 connections carry thousands of sub-millisecond calls a second; opening hundreds at once
# overran the 250 ms connect timeout in tests, which looked like an outage too.
REDIS_MAX_CONNECTIONS = 64
POOL_WAIT_SECONDS = 1.0
RETRY_AFTER_FAILURE_SECONDS = 2.0

T = TypeVar("T")
log = structlog.get_logger(logger_name="app.shared_state")


class SharedState:
    """A Redis client with a short timeout; while Redis is down, callers fall back locally."""

    def __init__(self, url: str) -> None:
        self.pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=REDIS_MAX_CONNECTIONS,
            timeout=POOL_WAIT_SECONDS,
            socket_timeout=REDIS_TIMEOUT_SECONDS,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            health_check_interval=0,
            retry=Retry(NoBackoff(), 0),  # a failure opens an incident; no hidden retries
        )
        self.client: redis.Redis = redis.Redis(connection_pool=self.pool)
        self._down_since: float | None = None
        self._retry_at = 0.0
        metrics.REDIS_UP.set(1)

    @property
    def available(self) -> bool:
        """False while an incident is on and the next probe is not yet due."""
        return self._down_since is None or time.monotonic() >= self._retry_at

    @property
    def healthy(self) -> bool:
        """No incident open."""
        return self._down_since is None

    async def run(self, operation: Callable[[], Awaitable[T]]) -> T | None:
        """Run a Redis operation; None (and an incident) if Redis fails or is skipped."""
        if not self.available:
            return None
        try:
            result = await operation()
        except (RedisError, StorageError, OSError, TimeoutError) as exc:
            self._failed(exc)
            return None
        self._succeeded()
        return result

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
        return bool(await self.run(self.client.ping))

    async def close(self) -> None:
        await self.client.aclose()
        await self.pool.disconnect()
