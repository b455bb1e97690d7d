"""Per-user limits: a 429 with Retry-After per user, windows that slide, and memory that
does not grow with idle users or with a generous limit.

Time is a FakeClock: ours, passed to the LimitStore, and `limits`' own, whose storage and
strategies read time.time() themselves (the `clock` fixture points them at the same one).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import limits.storage.memory
import limits.strategies
import pytest
import respx

from app.errors import RateLimited
from app.infra.rate_limits import SWEEP_INTERVAL_SECONDS, LimitStore, UserRateLimiter
from app.sandbox.dev_issuer import DevIssuer
from tests.conftest import AUDIENCE, TOKEN_PATH, Build, bearer
from tests.fakes.clock import FakeClock


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """One fake wall clock for the limiter and for `limits` itself."""
    clock = FakeClock()
    library_time = SimpleNamespace(time=clock)
    monkeypatch.setattr(limits.storage.memory, "time", library_time)
    monkeypatch.setattr(limits.strategies, "time", library_time)
    return clock


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


async def test_retry_after_is_the_time_left_in_the_window(clock: FakeClock) -> None:
    limiter = UserRateLimiter("2/minute", LimitStore(clock=clock), "token", "token requests")
    clock.advance(20)  # a third into the minute
    await limiter.check("ada")
    await limiter.check("ada")
    with pytest.raises(RateLimited) as refused:
        await limiter.check("ada")
    assert refused.value.headers == {"Retry-After": "40"}


async def test_in_memory_limits_forget_idle_users_and_stay_cheap(clock: FakeClock) -> None:
    store = LimitStore(clock=clock)
    limiter = UserRateLimiter("2/second", store, "token", "token requests")
    for i in range(20_000):
        await limiter.check(f"user-{i}")
    storage = store.local_storage
    assert len(storage.storage) == 20_000  # one window counter per user so far
    clock.advance(2)  # a counter lives for two windows (it weighs the next one)
    await storage.sweep()
    assert len(storage.storage) == 0  # windows over: nothing kept per idle user
    assert len(storage.expirations) == 0


async def test_a_generous_limit_keeps_two_counters_per_user_not_one_entry_per_request() -> None:
    store = LimitStore()
    limiter = UserRateLimiter("100000/hour", store, "token", "token requests")
    for _ in range(5_000):
        await limiter.check("busy-user")
    storage = store.local_storage
    assert len(storage.storage) <= 2  # this window's counter and, at most, the previous one
    assert sum(storage.storage.values()) == 5_000
    assert not storage.events  # no per-request timestamps


async def test_limits_slide_rather_than_reset_at_the_window_edge(clock: FakeClock) -> None:
    limiter = UserRateLimiter("10/second", LimitStore(clock=clock), "token", "token requests")
    clock.advance(0.05)  # just into a window
    for _ in range(10):
        await limiter.check("edge-user")
    clock.advance(0.97)  # just into the next one
    # A fixed window would allow ten more at once; the previous window still weighs 98 %.
    allowed = 0
    for _ in range(10):
        try:
            await limiter.check("edge-user")
            allowed += 1
        except RateLimited:
            break
    assert allowed == 1


async def test_idle_users_are_swept_at_most_once_an_interval(clock: FakeClock) -> None:
    store = LimitStore(clock=clock)
    limiter = UserRateLimiter("1/second", store, "token", "token requests")
    storage = store.local_storage
    await limiter.check("first")  # the first hit starts a sweep: nothing to sweep yet
    clock.advance(3)  # the first user's windows are over
    await limiter.check("second")
    assert len(storage.storage) == 2  # no sweep within the interval
    clock.advance(SWEEP_INTERVAL_SECONDS - 3)
    await limiter.check("third")  # the interval is over: this hit starts one
    assert storage.sweeping is not None
    await storage.sweeping
    assert len(storage.storage) == 1  # only the third user's window is left


async def test_the_sweep_override_is_the_one_limits_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """`SweepingMemoryStorage` overrides a name-mangled private method of `limits`: if a
    release renamed it, upstream's sweep of every key after every hit would silently come
    back. This fails first (and `pyproject.toml` bounds `limits` below its next major)."""
    from limits.storage import MemoryStorage

    from app.infra.rate_limits import SweepingMemoryStorage

    assert hasattr(MemoryStorage, "_MemoryStorage__schedule_expiry")
    calls = 0
    original = SweepingMemoryStorage._MemoryStorage__schedule_expiry

    def counted(self: SweepingMemoryStorage) -> None:
        nonlocal calls
        calls += 1
        original(self)

    monkeypatch.setattr(SweepingMemoryStorage, "_MemoryStorage__schedule_expiry", counted)
    threads = set(threading.enumerate())
    store = LimitStore()
    limiter = UserRateLimiter("1000/second", store, "token", "token requests")
    for i in range(50):
        await limiter.check(f"user-{i}")
    assert calls >= 50  # upstream calls the hook on every hit: ours answers it
    # ... and upstream's timer thread, which walks every key beside the loop, never runs
    assert not store.local_storage.timer.is_alive()
    assert set(threading.enumerate()) <= threads  # none started (earlier tests' may end)
