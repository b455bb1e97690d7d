"""The broker's Redis work on each shape operators run, for real: a three-node Cluster (every
multi-key script within one slot, keys spread over the nodes) and a primary found through
Sentinel. Tokens are minted once for two replicas, limits count across them, and a live
feed's stream, counter and wake-up work wherever its session's slot lives."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr

from app.capture.live.claims import FeedSlots
from app.capture.live.event_log import RedisEventLog
from app.config.redis import RedisTarget
from app.errors import RateLimited
from app.infra.rate_limits import LimitStore, UserRateLimiter
from app.infra.redis_state import SharedState
from app.tokens.cache import LocalTokenCache
from app.tokens.sealing import TokenSealer
from app.tokens.service import TokenService
from app.tokens.shared_store import SharedTokenStore
from tests.fakes.minter import CountingMinter
from tests.fakes.redis_topologies import (
    BROKER_ACL,
    BROKER_PASSWORD,
    CLUSTER_ACL,
    LIVE_ACL,
    SENTINEL_SERVICE,
    ClusterOfThree,
    SentinelGroup,
    add_broker_user,
)

API_KEY = "sk-shapes-0123456789abcdef"
SESSIONS = [f"cap-{n}" for n in range(12)]  # enough that their slots fall on every node


def _target(shape: str, request: pytest.FixtureRequest) -> RedisTarget:
    """The shape, reached as the broker's ACL user with the documented grants alone."""
    user = f"broker:{BROKER_PASSWORD}@"
    if shape == "cluster":
        cluster: ClusterOfThree = request.getfixturevalue("redis_cluster")
        cluster.wait_ok()
        for node in cluster.nodes:
            node.client().flushall()
            add_broker_user(node.client(), BROKER_ACL, LIVE_ACL, CLUSTER_ACL)
        url = cluster.url.replace("redis://", "redis://" + user)
        return RedisTarget(SecretStr(url), cluster=True)
    group: SentinelGroup = request.getfixturevalue("redis_sentinels")
    group.primary.client().flushall()
    add_broker_user(group.primary.client(), BROKER_ACL, LIVE_ACL)
    return RedisTarget(
        SecretStr(f"redis://{user}{SENTINEL_SERVICE}/0"),
        sentinels=tuple(("127.0.0.1", port) for port in group.ports),
    )


@pytest.fixture(params=["cluster", "sentinel"])
async def replicas(request: pytest.FixtureRequest) -> AsyncIterator[list[SharedState]]:
    """Two replicas' connections to one Redis of the shape named."""
    target = _target(request.param, request)
    states = [SharedState(target), SharedState(target)]
    refused_before = _refused()
    yield states
    for state in states:
        assert state.healthy, "a command failed on this shape"
        await state.close()
    assert _refused() == refused_before, "Redis refused a command (the ACL?)"


def _refused() -> float:
    return sum(
        sample.value
        for family in REGISTRY.collect()
        if family.name == "broker_redis_commands_refused"
        for sample in family.samples
        if sample.name.endswith("_total")
    )


def _tokens(shared: SharedState, minter: CountingMinter) -> TokenService:
    store = SharedTokenStore(shared, TokenSealer(API_KEY))
    return TokenService(minter, LocalTokenCache(100), store, "https://v", deadline=5)


async def test_two_replicas_mint_once_per_user(replicas: list[SharedState]) -> None:
    minter = CountingMinter(delay=0.05)
    services = [_tokens(shared, minter) for shared in replicas]
    users = [f"user-{n}" for n in range(6)]  # their keys fall on several nodes
    issued = await asyncio.gather(
        *(services[i % 2].issue(user, 900) for i in range(4) for user in users)
    )
    assert minter.calls == len(users)
    assert len({i.minted.token for i in issued}) == len(users)
    # a third replica, fresh, reads what they stored
    again = await _tokens(replicas[0], minter).issue(users[0], 900)
    assert again.source == "cache"
    assert minter.calls == len(users)


async def test_limits_count_across_replicas(replicas: list[SharedState]) -> None:
    limiters = [
        UserRateLimiter("3/minute", LimitStore(shared), "token", "token requests")
        for shared in replicas
    ]
    for i in range(3):
        await limiters[i % 2].check("ada")
    with pytest.raises(RateLimited):
        await limiters[1].check("ada")
    await limiters[0].check("bob")  # another user's count is apart


async def test_a_live_feed_replays_and_wakes_across_replicas(
    replicas: list[SharedState],
) -> None:
    writer, reader = RedisEventLog(replicas[0]), RedisEventLog(replicas[1])
    reader.start()
    try:
        for session in SESSIONS:
            assert await writer.append(session, "status", {"n": 1}) == 1
            assert await writer.append(session, "status", {"n": 2}) == 2
        for session in SESSIONS:
            assert [e.id for e in await reader.after(session, 0)] == [1, 2]
            assert [e.id for e in await reader.after(session, 1)] == [2]
        await asyncio.sleep(0.2)  # the reader's subscription is in place

        async def append_soon() -> None:
            await asyncio.sleep(0.1)
            await writer.append(SESSIONS[-1], "status", {"n": 3})

        news = asyncio.create_task(append_soon())
        loop = asyncio.get_running_loop()
        started = loop.time()
        await reader.wait(SESSIONS[-1], 2, patience=30)
        await news
        assert loop.time() - started < 15, "woken by the news, not by its patience (30 s)"
        assert [e.id for e in await reader.after(SESSIONS[-1], 2)] == [3]
    finally:
        await reader.close()


async def test_feed_leases_are_counted_per_user_across_replicas(
    replicas: list[SharedState],
) -> None:
    slots = [FeedSlots(shared, most=2) for shared in replicas]
    first, second = await slots[0].take("ada"), await slots[1].take("ada")
    assert first is not None
    assert second is not None
    assert await slots[0].take("ada") is None
    await slots[1].give_back("ada", first)
    assert await slots[0].take("ada") is not None


def test_the_grants_the_docs_give_are_the_ones_tested_here() -> None:
    docs = Path(__file__).parents[2] / "docs"

    def text(name: str) -> str:
        return " ".join((docs / name).read_text().split())

    assert BROKER_ACL.removeprefix("on ") in text("security.md")
    assert LIVE_ACL in text("operations.md")
    assert CLUSTER_ACL in text("operations.md")
