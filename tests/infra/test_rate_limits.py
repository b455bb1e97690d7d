"""Per-user limits, the metrics endpoint, and the audit line."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

import pytest
import respx

from app.errors import RateLimited
from app.sandbox.dev_issuer import DevIssuer
from tests.conftest import AUDIENCE, TOKEN_PATH, Build, bearer


async def test_over_the_limit_is_429_with_retry_after_per_user(
    app_client: Build,
    make_settings: Callable[..., Any],
    issuer: DevIssuer,
    network: respx.MockRouter,
) -> None:
    client = await app_client(make_settings(rate_limit="3/minute"))
    ada = bearer(issuer.mint("ada", AUDIENCE))
    for _ in range(3):
        assert (await client.post(TOKEN_PATH, headers=ada)).status_code == 200
    limited = await client.post(TOKEN_PATH, headers=ada)
    assert limited.status_code == 429
    assert limited.json()["code"] == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    bob = bearer(issuer.mint("bob", AUDIENCE))
    assert (await client.post(TOKEN_PATH, headers=bob)).status_code == 200


async def test_in_memory_limits_forget_idle_users_and_stay_cheap() -> None:
    from app.infra.rate_limits import LimitStore, UserRateLimiter

    store = LimitStore()
    limiter = UserRateLimiter("2/second", store, "token", "token requests")
    for i in range(20_000):
        await limiter.check(f"user-{i}")
    storage = store.local_storage
    assert len(storage.storage) == 20_000  # one window counter per user so far
    await asyncio.sleep(2.1)  # a counter lives for two windows (it weighs the next one)
    await storage.sweep()
    assert len(storage.storage) == 0  # windows over: nothing kept per idle user
    assert len(storage.expirations) == 0


async def test_a_generous_limit_keeps_two_counters_per_user_not_one_entry_per_request() -> None:
    from app.infra.rate_limits import LimitStore, UserRateLimiter

    store = LimitStore()
    limiter = UserRateLimiter("100000/hour", store, "token", "token requests")
    for _ in range(5_000):
        await limiter.check("busy-user")
    storage = store.local_storage
    assert len(storage.storage) <= 2  # this window's counter and, at most, the previous one
    assert sum(storage.storage.values()) == 5_000
    assert not storage.events  # no per-request timestamps


async def test_limits_slide_rather_than_reset_at_the_window_edge() -> None:
    from app.infra.rate_limits import LimitStore, UserRateLimiter

    store = LimitStore()
    limiter = UserRateLimiter("10/second", store, "token", "token requests")
    window_start = math.floor(time.time()) + 1
    await asyncio.sleep(window_start - time.time() + 0.05)
    for _ in range(10):
        await limiter.check("edge-user")
    await asyncio.sleep(window_start + 1.02 - time.time())  # just into the next window
    # A fixed window would allow ten more at once; the previous window still weighs ~98 %.
    allowed = 0
    for _ in range(10):
        try:
            await limiter.check("edge-user")
            allowed += 1
        except RateLimited:
            break
    assert allowed <= 3  # even if this machine stalled for a quarter of a second


async def test_the_sweep_override_is_the_one_limits_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """`SweepingMemoryStorage` overrides a name-mangled private method of `limits`: if a
    release renamed it, upstream's sweep of every key after every hit would silently come
    back. This fails first (and `pyproject.toml` bounds `limits` below its next major)."""
    from limits.aio.storage import MemoryStorage

    from app.infra.rate_limits import LimitStore, SweepingMemoryStorage, UserRateLimiter

    assert hasattr(MemoryStorage, "_MemoryStorage__schedule_expiry")
    calls = 0
    original = SweepingMemoryStorage._MemoryStorage__schedule_expiry

    async def counted(self: SweepingMemoryStorage) -> None:
        nonlocal calls
        calls += 1
        await original(self)

    monkeypatch.setattr(SweepingMemoryStorage, "_MemoryStorage__schedule_expiry", counted)
    store = LimitStore()
    limiter = UserRateLimiter("1000/second", store, "token", "token requests")
    for i in range(50):
        await limiter.check(f"user-{i}")
    assert calls >= 50  # upstream calls the hook on every hit: ours answers it
    sweeps = store.local_storage.timer
    assert sweeps is not None  # one sweep started, the next not before the interval
    assert store.local_storage._next_sweep > 0
