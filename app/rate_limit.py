"""Per-user limits on the token endpoint with `limits`: in memory, or shared through Redis."""

from __future__ import annotations

import asyncio
import bisect
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
from app.shared_state import SharedState

T = TypeVar("T")
log = structlog.get_logger(logger_name="app.rate_limit")


SWEEP_INTERVAL_SECONDS = 10.0
SWEEP_BATCH = 2000


class SweepingMemoryStorage(MemoryStorage):
    """`limits`' in-process storage with a cheaper expiry sweep.

    Upstream's async MemoryStorage starts a sweep of *every* key, with one thread hop per
    key, after any hit once the previous sweep ended: with many users that is work
    proportional to the user count on every request (measured in docs/performance.md). Here
    the sweep runs at most every SWEEP_INTERVAL_SECONDS, in-loop, yielding every SWEEP_BATCH
    keys. The window arithmetic stays the library's.
    """

    def __init__(self) -> None:
        super().__init__()
        self._next_sweep = 0.0

    async def _MemoryStorage__schedule_expiry(self) -> None:  # noqa: N802 - upstream name
        now = time.monotonic()
        if now < self._next_sweep or (self.timer is not None and not self.timer.done()):
            return
        self._next_sweep = now + SWEEP_INTERVAL_SECONDS
        self.timer = asyncio.create_task(self.sweep())

    async def sweep(self) -> None:
        """Drop expired moving-window entries and counters; forget idle keys."""
        now = time.time()
        for index, key in enumerate(list(self.events)):
            events = self.events.get(key)
            if events:
                del events[bisect.bisect_left(events, -now, key=lambda e: -e.expiry) :]
            if not events:
                self.events.pop(key, None)
                self.locks.pop(key, None)
            if index % SWEEP_BATCH == SWEEP_BATCH - 1:
                await asyncio.sleep(0)
        for key, expiry in list(self.expirations.items()):
            if expiry <= now:
                self.storage.pop(key, None)
                self.expirations.pop(key, None)
                self.locks.pop(key, None)


def _limits_uri(redis_url: str) -> str:
    return "async+" + redis_url if not redis_url.startswith("async+") else redis_url


class UserRateLimiter:
    """Moving-window limits per user id; falls back to this process when Redis is down."""

    def __init__(
        self, rate: str, shared: SharedState | None = None, redis_url: str | None = None
    ) -> None:
        self._items: list[RateLimitItem] = parse_many(rate)
        self.local_storage = SweepingMemoryStorage()
        self._local = MovingWindowRateLimiter(self.local_storage)
        self._shared = shared
        self._remote: MovingWindowRateLimiter | None = None
        if shared is not None and redis_url is not None:
            storage = RedisStorage(
                _limits_uri(redis_url),
                implementation="redispy",
                wrap_exceptions=True,
                key_prefix="vtb:v1:limits",
                connection_pool=shared.pool,  # type: ignore[arg-type]  # typed too narrowly
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
