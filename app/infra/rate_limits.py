"""Per-user limits with `limits`: in memory, or shared through Redis."""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

import structlog
from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.storage.redis.redispy import RedispyBridge
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from limits.typing import AsyncRedisClient

from app.errors import RateLimited
from app.infra.redis_clients import RedisClient
from app.infra.redis_state import SharedState
from app.observability import metrics

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
    keys. The window arithmetic stays the library's, and so does its clock: `clock` must tell
    the time `limits` reads (time.time), which its expiries are.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self._clock = clock
        self._next_sweep = float("-inf")

    async def _MemoryStorage__schedule_expiry(self) -> None:  # noqa: N802 - upstream name
        now = self._clock()
        if now < self._next_sweep or (self.timer is not None and not self.timer.done()):
            return
        self._next_sweep = now + SWEEP_INTERVAL_SECONDS
        self.timer = asyncio.create_task(self.sweep())

    async def sweep(self) -> None:
        """Drop expired window counters: nothing is kept for a user whose windows are over."""
        now = self._clock()
        for index, (key, expiry) in enumerate(list(self.expirations.items())):
            if expiry <= now:
                self.storage.pop(key, None)
                self.expirations.pop(key, None)
                self.locks.pop(key, None)
            if index % SWEEP_BATCH == SWEEP_BATCH - 1:
                await asyncio.sleep(0)


class OnSharedClient(RedisStorage):
    """`limits`' Redis storage on the broker's own client, whatever its shape (one node,
    Sentinel's primary or a Cluster): one set of connections, timeouts, TLS and credentials.

    `configure_bridge` is the hook the library's own Cluster and Sentinel storages override
    to choose their client; this one hands it ours. The sliding window's two keys share a
    hash tag (the library's), so each of its scripts stays in one Cluster slot.
    """

    def __init__(self, client: RedisClient) -> None:
        self._client = client
        super().__init__(
            "async+redis://",  # not used to connect: configure_bridge gives the client
            implementation="redispy",
            wrap_exceptions=True,
            key_prefix="vtb:v1:limits",
        )

    def configure_bridge(self) -> None:
        bridge = self.bridge
        assert isinstance(bridge, RedispyBridge)
        client = cast(AsyncRedisClient, self._client)  # the protocol both clients meet
        bridge.storage = client
        bridge.connection_getter = lambda _readonly: client


class LimitStore:
    """Where the counters of every limit live: in this process, and in Redis when there is
    one (shared by replicas), with this process taking over while Redis is down."""

    def __init__(
        self, shared: SharedState | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.clock = clock  # what `limits` reads too (time.time): for Retry-After
        self.local_storage = SweepingMemoryStorage(clock)
        self.local = SlidingWindowCounterRateLimiter(self.local_storage)
        self._shared = shared
        self._remote: SlidingWindowCounterRateLimiter | None = None
        if shared is not None:
            self._remote = SlidingWindowCounterRateLimiter(OnSharedClient(shared.client))

    def pick(self) -> SlidingWindowCounterRateLimiter:
        """Redis's counters while it is usable, else this process's."""
        if self._remote is None or self._shared is None or not self._shared.available:
            return self.local
        return self._remote

    async def run(
        self,
        limiter: SlidingWindowCounterRateLimiter,
        call: Callable[[SlidingWindowCounterRateLimiter], Awaitable[T]],
    ) -> T:
        """Run on the chosen limiter; if Redis fails mid-call, run in this process instead."""
        shared = self._shared
        if limiter is self.local or shared is None:
            return await call(limiter)

        async def on_redis() -> T:
            try:
                return await call(limiter)
            except StorageError as exc:  # limits' wrapper: the Redis error is what happened
                raise exc.storage_error from None

        result = await shared.run(on_redis, "RATE_LIMIT")
        return result if result is not None else await call(self.local)


class UserRateLimiter:
    """Sliding-window limits per user id, counted in one store under their own name.

    The sliding-window counter weighs the previous window's count by how much of it still
    overlaps the last `period`: two counters per user and limit, whatever the limit.
    """

    def __init__(self, rate: str, store: LimitStore, name: str, noun: str) -> None:
        self._items: list[RateLimitItem] = parse_many(rate)
        self._store = store
        self._name = name  # another limit (capture sessions) counts apart, even at one rate
        self._noun = noun

    async def check(self, user_id: str) -> None:
        """Count one request for this user; raise RateLimited when over any limit."""
        who = hashlib.sha256(user_id.encode()).hexdigest()[:32]
        limiter = self._store.pick()
        for item in self._items:
            await self._check_one(limiter, item, who)

    async def _check_one(
        self, limiter: SlidingWindowCounterRateLimiter, item: RateLimitItem, who: str
    ) -> None:
        name = self._name
        if await self._store.run(limiter, lambda lim: lim.hit(item, name, who)):
            return
        stats = await self._store.run(limiter, lambda lim: lim.get_window_stats(item, name, who))
        retry = max(1, math.ceil(stats.reset_time - self._store.clock()))
        metrics.RATE_LIMITED.inc()
        raise RateLimited(
            f"Too many {self._noun} for this user; retry after {retry} s.",
            headers={"Retry-After": str(retry)},
        )
