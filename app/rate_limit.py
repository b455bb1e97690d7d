"""Per-user limits on the token endpoint with `limits`: in memory, or shared through Redis."""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from app.errors import RateLimited
from app.observability import metrics
from app.shared_state import SharedState

T = TypeVar("T")
log = structlog.get_logger(logger_name=__name__)


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
        """Drop expired window counters: nothing is kept for a user whose windows are over."""
        now = time.time()
        for index, (key, expiry) in enumerate(list(self.expirations.items())):
            if expiry <= now:
                self.storage.pop(key, None)
                self.expirations.pop(key, None)
                self.locks.pop(key, None)
            if index % SWEEP_BATCH == SWEEP_BATCH - 1:
                await asyncio.sleep(0)


def _limits_uri(redis_url: str) -> str:
    return "async+" + redis_url if not redis_url.startswith("async+") else redis_url


class UserRateLimiter:
    """Sliding-window limits per user id; falls back to this process when Redis is down.

    The sliding-window counter weighs the previous window's count by how much of it still
    overlaps the last `period`: two counters per user and limit, whatever the limit. The
    moving window it replaced kept one timestamp per allowed request and inserted each new
    one at the front of a list, so a generous limit such as `100000/hour` cost memory and
    time in proportion to the limit on every request (docs/performance.md).
    """

    def __init__(
        self,
        rate: str,
        shared: SharedState | None = None,
        redis_url: str | None = None,
        key_prefix: str | None = None,
        noun: str = "token requests",
    ) -> None:
        self._items: list[RateLimitItem] = parse_many(rate)
        self._noun = noun
        self.local_storage = SweepingMemoryStorage()
        self._local = SlidingWindowCounterRateLimiter(self.local_storage)
        self._shared = shared
        self._remote: SlidingWindowCounterRateLimiter | None = None
        if shared is not None and redis_url is not None:
            storage = RedisStorage(
                _limits_uri(redis_url),
                implementation="redispy",
                wrap_exceptions=True,
                # another limit (capture sessions) counts apart, even at the same rate
                key_prefix="vtb:v1:limits" + (f":{key_prefix}" if key_prefix else ""),
                connection_pool=shared.pool,  # type: ignore[arg-type]  # typed too narrowly
            )
            self._remote = SlidingWindowCounterRateLimiter(storage)

    async def check(self, user_id: str) -> None:
        """Count one request for this user; raise RateLimited when over any limit."""
        who = hashlib.sha256(user_id.encode()).hexdigest()[:32]
        limiter = self._pick()
        for item in self._items:
            await self._check_one(limiter, item, who)

    def _pick(self) -> SlidingWindowCounterRateLimiter:
        if self._remote is None or self._shared is None or not self._shared.available:
            return self._local
        return self._remote

    async def _check_one(
        self, limiter: SlidingWindowCounterRateLimiter, item: RateLimitItem, who: str
    ) -> None:
        if await self._run(limiter, lambda lim: lim.hit(item, who)):
            return
        stats = await self._run(limiter, lambda lim: lim.get_window_stats(item, who))
        retry = max(1, math.ceil(stats.reset_time - time.time()))
        metrics.RATE_LIMITED.inc()
        raise RateLimited(
            f"Too many {self._noun} for this user; retry after {retry} s.",
            headers={"Retry-After": str(retry)},
        )

    async def _run(
        self,
        limiter: SlidingWindowCounterRateLimiter,
        call: Callable[[SlidingWindowCounterRateLimiter], Awaitable[T]],
    ) -> T:
        """Run on the chosen limiter; if Redis fails mid-call, run in this process instead."""
        if limiter is self._local or self._shared is None:
            return await call(limiter)
        result = await self._shared.run(lambda: call(limiter), "RATE_LIMIT")
        return result if result is not None else await call(self._local)
