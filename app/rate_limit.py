"""Per-user limits on the token endpoint with `limits`: in memory, or shared through Redis."""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from limits import RateLimitItem, WindowStats, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

from app import metrics
from app.errors import RateLimited
from app.shared_state import REDIS_TIMEOUT_SECONDS, SharedState

T = TypeVar("T")
log = structlog.get_logger(logger_name="app.rate_limit")


def _limits_uri(redis_url: str) -> str:
    return "async+" + redis_url if not redis_url.startswith("async+") else redis_url


class UserRateLimiter:
    """Moving-window limits per user id; falls back to this process when Redis is down."""

    def __init__(
        self, rate: str, shared: SharedState | None = None, redis_url: str | None = None
    ) -> None:
        self._items: list[RateLimitItem] = parse_many(rate)
        self._local = MovingWindowRateLimiter(MemoryStorage())
        self._shared = shared
        self._remote: MovingWindowRateLimiter | None = None
        if shared is not None and redis_url is not None:
            storage = RedisStorage(
                _limits_uri(redis_url),
                implementation="redispy",
                wrap_exceptions=True,
                key_prefix="vtb:v1:limits",
                socket_timeout=REDIS_TIMEOUT_SECONDS,
                socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            )
            self._remote = MovingWindowRateLimiter(storage)

    async def check(self, user_id: str) -> None:
        """Count one request for this user; raise RateLimited when over any limit."""
        who = hashlib.sha256(user_id.encode()).hexdigest()[:32]
        limiter = self._pick()
        for item in self._items:

            async def hit(lim: MovingWindowRateLimiter, i: RateLimitItem = item) -> bool:
                return await lim.hit(i, who)

            async def stats_of(
                lim: MovingWindowRateLimiter, i: RateLimitItem = item
            ) -> WindowStats:
                return await lim.get_window_stats(i, who)

            if not await self._run(limiter, hit):
                stats = await self._run(limiter, stats_of)
                retry = max(1, math.ceil(stats.reset_time - time.time()))
                metrics.RATE_LIMITED.inc()
                raise RateLimited(
                    f"Too many token requests for this user; retry after {retry} s.",
                    headers={"Retry-After": str(retry)},
                )

    def _pick(self) -> MovingWindowRateLimiter:
        if self._remote is None or self._shared is None or not self._shared.available:
            return self._local
        return self._remote

    async def _run(
        self,
        limiter: MovingWindowRateLimiter,
        call: Callable[[MovingWindowRateLimiter], Awaitable[T]],
    ) -> T:
        """Run on the chosen limiter; if Redis fails mid-call, run in this process instead."""
        if limiter is self._local or self._shared is None:
            return await call(limiter)
        result = await self._shared.run(lambda: call(limiter))
        return result if result is not None else await call(self._local)
