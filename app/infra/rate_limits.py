"""Per-user limits with `limits`: in memory, or shared through Redis."""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar, cast

import structlog
from limits import RateLimitItem, WindowStats, parse_many
from limits.aio.storage import RedisStorage
from limits.aio.storage.redis.redispy import RedispyBridge
from limits.aio.strategies import SlidingWindowCounterRateLimiter as SharedLimiter
from limits.errors import StorageError
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter as LocalLimiter
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
    """`limits`' in-process storage, its synchronous one, with a cheaper expiry sweep.

    Synchronous: the counters are only ever touched on the event loop's thread, and a hit is
    then a few plain calls, where the asynchronous storage makes a dozen coroutine frames and
    an asyncio lock per key (twice the time, on every request: docs/performance.md).

    Upstream's expiry runs on a timer thread that walks *every* key, 10 ms after any hit once
    the previous walk ended: with many users, work proportional to the user count on every
    request, and a thread holding the GIL against the loop's. Here the sweep runs at most every
    SWEEP_INTERVAL_SECONDS, on the loop, yielding every SWEEP_BATCH keys. The window arithmetic
    stays the library's, and so does its clock: `clock` must tell the time `limits` reads
    (time.time), which its expiries are.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        # Upstream's first walk, on a thread it starts: the sweep below replaces it. Cancelled,
        # the thread wakes and ends at once; joined, it is gone before any hit.
        self.timer.cancel()
        self.timer.join()
        self._clock = clock
        self._next_sweep = float("-inf")
        self.sweeping: asyncio.Task[None] | None = None

    def _MemoryStorage__schedule_expiry(self) -> None:  # noqa: N802 - upstream name
        now = self._clock()
        if now < self._next_sweep or (self.sweeping is not None and not self.sweeping.done()):
            return
        self._next_sweep = now + SWEEP_INTERVAL_SECONDS
        # Called from a hit, so on the loop: the broker counts requests in its handlers.
        self.sweeping = asyncio.get_running_loop().create_task(self.sweep())

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
        self.local = LocalLimiter(self.local_storage)
        self._shared = shared
        self._remote: SharedLimiter | None = None
        if shared is not None:
            self._remote = SharedLimiter(OnSharedClient(shared.client))

    async def hit(self, item: RateLimitItem, *identifiers: str) -> bool:
        """Count one request against this limit; whether it is within it."""
        return await self._run(
            lambda remote: remote.hit(item, *identifiers),
            lambda: self.local.hit(item, *identifiers),
        )

    async def stats(self, item: RateLimitItem, *identifiers: str) -> WindowStats:
        """When the limit's window resets, and what is left of it."""
        return await self._run(
            lambda remote: remote.get_window_stats(item, *identifiers),
            lambda: self.local.get_window_stats(item, *identifiers),
        )

    async def _run(
        self, on_redis: Callable[[SharedLimiter], Awaitable[T]], here: Callable[[], T]
    ) -> T:
        """Redis's counters while it is usable, else this process's; if Redis fails
        mid-call, this process's instead."""
        shared, remote = self._shared, self._remote
        if remote is None or shared is None or not shared.available:
            return here()

        async def call() -> T:
            try:
                return await on_redis(remote)
            except StorageError as exc:  # limits' wrapper: the Redis error is what happened
                raise exc.storage_error from None

        result = await shared.run(call, "RATE_LIMIT")
        return result if result is not None else here()


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
        for item in self._items:
            if not await self._store.hit(item, self._name, who):
                await self._refuse(item, who)

    async def _refuse(self, item: RateLimitItem, who: str) -> NoReturn:
        stats = await self._store.stats(item, self._name, who)
        retry = max(1, math.ceil(stats.reset_time - self._store.clock()))
        metrics.RATE_LIMITED.inc()
        raise RateLimited(
            f"Too many {self._noun} for this user; retry after {retry} s.",
            headers={"Retry-After": str(retry)},
        )
