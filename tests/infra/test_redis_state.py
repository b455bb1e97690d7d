"""The shared Redis: a busy broker is not a Redis outage; a hung or refusing Redis is one;
a command Redis refuses affects that call alone."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from prometheus_client import REGISTRY
from redis.asyncio.connection import AbstractConnection

from app.infra.rate_limits import LimitStore, UserRateLimiter
from app.infra.redis_state import REDIS_HARD_TIMEOUT_SECONDS, SharedState, patient_timeout
from tests.fakes.redis_server import RedisServer

API_KEY = "sk-shared-state-0123456789"
_REFUSED = ("broker_redis_commands_refused_total", {"command": "RATE_LIMIT"})


def _hog(seconds: float) -> None:
    """Keep the event loop's thread busy, as a burst of requests does."""
    time.sleep(seconds)


async def test_a_redis_that_answers_is_not_an_outage_while_the_loop_is_busy(
    shared: SharedState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command goes out, Redis answers at once, and the loop is busy elsewhere for
    600 ms before it reads the answer: the answer is used, and Redis is not declared down."""
    await shared.ping()
    original = AbstractConnection.send_packed_command

    async def send_then_get_busy(self: AbstractConnection, *args: Any, **kwargs: Any) -> None:
        await original(self, *args, **kwargs)
        asyncio.get_running_loop().call_soon(_hog, 0.6)  # other requests' work, next in line

    monkeypatch.setattr(AbstractConnection, "send_packed_command", send_then_get_busy)
    assert await shared.run(lambda: shared.client.set("k", b"v")) is True
    assert await shared.run(lambda: shared.client.get("k")) == b"v"
    assert shared.healthy


async def test_a_burst_of_concurrent_calls_on_a_slow_loop_never_opens_an_incident(
    shared: SharedState,
) -> None:
    """Three times as many calls as the pool has connections, while the loop is slowed down
    by work between them: every call is answered."""

    async def call(i: int) -> object:
        _hog(0.002)  # each request's own CPU work, ~0.6 s of it in all
        return await shared.run(lambda: shared.client.incr("burst"))

    results = await asyncio.gather(*(call(i) for i in range(300)))
    assert None not in results
    assert shared.healthy
    assert int(await shared.client.get("burst") or 0) == 300


async def test_a_hung_redis_is_detected_quickly_on_an_idle_loop(
    redis_server: RedisServer, shared: SharedState
) -> None:
    await shared.ping()
    redis_server.freeze()
    try:
        started = time.monotonic()
        assert await shared.run(lambda: shared.client.get("k")) is None
        elapsed = time.monotonic() - started
        assert not shared.healthy
        assert not shared.available  # later calls go local at once for a while
        assert elapsed < REDIS_HARD_TIMEOUT_SECONDS
    finally:
        redis_server.thaw()
    assert await shared.ping()
    assert shared.healthy


async def test_patient_timeout_is_an_ordinary_timeout_on_an_idle_loop() -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with patient_timeout(0.2, hard_limit=5):
            await asyncio.sleep(10)
    assert 0.15 < time.monotonic() - started < 5


async def test_patient_timeout_holds_at_its_hard_limit_however_busy_the_loop() -> None:
    async def keep_busy() -> None:
        while True:
            _hog(0.05)
            await asyncio.sleep(0)

    hog = asyncio.create_task(keep_busy())
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            async with patient_timeout(10, hard_limit=0.3):
                await asyncio.sleep(10)
        assert time.monotonic() - started < 5
    finally:
        hog.cancel()


async def test_a_garbage_limiter_key_affects_that_call_only(
    redis_server: RedisServer, shared: SharedState, capsys: pytest.CaptureFixture[str]
) -> None:
    limiter = UserRateLimiter("5/minute", LimitStore(shared), "token", "token requests")
    await limiter.check("ada")
    raw = redis_server.client()
    keys = raw.keys("vtb:v1:limits*")
    assert keys
    for key in keys:  # a value no counter script can add to
        raw.delete(key)
        raw.rpush(key, "garbage")
    refused = REGISTRY.get_sample_value(*_REFUSED) or 0.0
    await limiter.check("ada")  # counted in this process instead, no error
    # the RedisRefusingCommands alert's counter, by the command refused
    assert REGISTRY.get_sample_value(*_REFUSED) == refused + 1
    assert shared.healthy
    assert shared.available  # other users still share their limits through Redis
    await limiter.check("bob")
    assert raw.keys("vtb:v1:limits*") != keys
    assert "redis_unavailable" not in capsys.readouterr().out
