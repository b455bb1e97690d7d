"""Two replicas' token services on one real Redis: one mint per key, whatever the timing;
a mint lock released only by its owner; whatever lies in Redis never becomes a 500."""

from __future__ import annotations

import asyncio

from app.infra.redis_state import SharedState
from app.tokens.cache import LocalTokenCache
from app.tokens.sealing import TokenSealer
from app.tokens.service import TokenService
from app.tokens.shared_store import SharedTokenStore
from tests.fakes.minter import CountingMinter
from tests.fakes.redis_server import RedisServer

API_KEY = "sk-shared-coalescing-0123456789"


class GatedStore(SharedTokenStore):
    """A replica that reaches the lock (or the lock check) only after `gate` opens.

    This replays the unlucky interleavings a busy machine produces now and then: the other
    replica stores its token and unlocks between our cache miss and our next step.
    """

    def __init__(self, shared: SharedState, gate: asyncio.Event, step: str) -> None:
        super().__init__(shared, TokenSealer(API_KEY))
        self._gate = gate
        self._step = step

    async def try_lock(self, key: str, hold_ms: int) -> bool | None:
        if self._step == "lock":
            await self._gate.wait()
        return await super().try_lock(key, hold_ms)

    async def locked(self, key: str) -> bool:
        if self._step == "locked":
            await self._gate.wait()
        return await super().locked(key)


def _replica(minter: CountingMinter, store: SharedTokenStore) -> TokenService:
    return TokenService(minter, LocalTokenCache(100), store, "https://v", deadline=5)


async def _race(shared: SharedState, step: str) -> tuple[CountingMinter, list[str]]:
    minter = CountingMinter(delay=0.1)
    first_done = asyncio.Event()
    first = _replica(minter, SharedTokenStore(shared, TokenSealer(API_KEY)))
    second = _replica(minter, GatedStore(shared, first_done, step))

    async def first_replica() -> str:
        issued = await first.issue("ada", 900)
        first_done.set()
        return issued.minted.token

    async def second_replica() -> str:
        await asyncio.sleep(0.02)  # arrives while the first replica holds the lock
        return (await second.issue("ada", 900)).minted.token

    tokens = await asyncio.gather(first_replica(), second_replica())
    return minter, list(tokens)


async def test_a_replica_that_wins_the_lock_late_reuses_the_token_just_stored(
    shared: SharedState,
) -> None:
    minter, tokens = await _race(shared, "lock")
    assert minter.calls == 1
    assert tokens[0] == tokens[1]


async def test_a_waiting_replica_that_sees_the_lock_gone_reuses_the_token_just_stored(
    shared: SharedState,
) -> None:
    minter, tokens = await _race(shared, "locked")
    assert minter.calls == 1
    assert tokens[0] == tokens[1]


async def test_many_requests_on_two_replicas_make_one_call(shared: SharedState) -> None:
    minter = CountingMinter(delay=0.1)
    replicas = [_replica(minter, SharedTokenStore(shared, TokenSealer(API_KEY))) for _ in "ab"]
    results = await asyncio.gather(*(replicas[i % 2].issue("ada", 900) for i in range(200)))
    assert minter.calls == 1
    assert len({r.minted.token for r in results}) == 1


async def test_a_mint_lock_is_released_only_by_its_owner(shared: SharedState) -> None:
    slow = SharedTokenStore(shared, TokenSealer(API_KEY))
    other = SharedTokenStore(shared, TokenSealer(API_KEY))
    assert await slow.try_lock("key", hold_ms=100) is True
    assert await other.try_lock("key", hold_ms=5000) is False  # held
    await asyncio.sleep(0.2)  # the slow replica's mint outlasts its lock
    assert await other.try_lock("key", hold_ms=5000) is True
    await slow.unlock("key")  # late: must not free the other replica's lock
    assert await other.locked("key")
    assert shared.healthy
    await other.unlock("key")
    assert not await other.locked("key")


async def test_a_garbage_failure_marker_is_an_upstream_error(
    redis_server: RedisServer, shared: SharedState
) -> None:
    store = SharedTokenStore(shared, TokenSealer(API_KEY))
    redis_server.client().set("vtb:v1:fail:key", b"\xff\xfe not utf-8")
    assert await store.failure("key") is not None
    assert shared.healthy
