"""Reuse while half the lifetime is left, one upstream call per key, bounded memory."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.errors import UpstreamUnavailable
from app.token_cache import CachedToken, LocalTokenCache, cache_key
from app.token_service import TokenService
from app.videodb_client import MintedToken


class CountingMinter:
    """A VideoDB stand-in that counts calls; optionally slow or failing."""

    def __init__(self, delay: float = 0.0, fail: bool = False, granted: int | None = None) -> None:
        self.calls = 0
        self.delay = delay
        self.fail = fail
        self.granted = granted

    async def mint(self, user_id: str, expires_in: int) -> MintedToken:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.fail:
            raise UpstreamUnavailable("down", 5)
        lifetime = self.granted if self.granted is not None else expires_in
        return MintedToken(f"st-{user_id}-{self.calls}", int(time.time()) + lifetime)


def _service(minter: CountingMinter, max_entries: int = 100) -> TokenService:
    return TokenService(minter, LocalTokenCache(max_entries), None, "https://v", deadline=5)


async def test_reuses_a_token_for_the_same_user_and_lifetime() -> None:
    minter = CountingMinter()
    service = _service(minter)
    first = await service.issue("ada", 900)
    again = await service.issue("ada", 900)
    assert first.source == "upstream"
    assert again.source == "cache"
    assert again.minted == first.minted
    other_ttl = await service.issue("ada", 600)
    other_user = await service.issue("bob", 900)
    assert other_ttl.minted.token != first.minted.token
    assert other_user.minted.token != first.minted.token
    assert minter.calls == 3


async def test_no_reuse_once_half_the_lifetime_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    minter = CountingMinter()
    service = _service(minter)
    await service.issue("ada", 100)
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 51)
    fresh = await service.issue("ada", 100)
    assert fresh.source == "upstream"
    assert minter.calls == 2


async def test_a_short_grant_is_judged_by_its_own_lifetime() -> None:
    minter = CountingMinter(granted=1)  # VideoDB granted far less than asked
    service = _service(minter)
    await service.issue("ada", 900)
    await asyncio.sleep(0.6)
    assert (await service.issue("ada", 900)).source == "upstream"


async def test_thousand_concurrent_requests_of_one_user_make_one_call() -> None:
    minter = CountingMinter(delay=0.05)
    service = _service(minter)
    results = await asyncio.gather(*(service.issue("ada", 900) for _ in range(1000)))
    assert minter.calls == 1
    assert len({r.minted.token for r in results}) == 1
    assert sorted({r.source for r in results}) == ["coalesced", "upstream"]


async def test_thousand_users_make_a_thousand_calls() -> None:
    minter = CountingMinter(delay=0.01)
    service = _service(minter, max_entries=2000)
    await asyncio.gather(*(service.issue(f"user-{i}", 900) for i in range(1000)))
    assert minter.calls == 1000


async def test_a_failure_is_shared_and_not_cached() -> None:
    minter = CountingMinter(delay=0.05, fail=True)
    service = _service(minter)
    results = await asyncio.gather(
        *(service.issue("ada", 900) for _ in range(50)), return_exceptions=True
    )
    assert all(isinstance(r, UpstreamUnavailable) for r in results)
    assert minter.calls == 1
    minter.fail = False
    assert (await service.issue("ada", 900)).source == "upstream"
    assert minter.calls == 2


def test_cache_is_bounded() -> None:
    cache = LocalTokenCache(max_entries=100)
    now = time.time()
    for i in range(1000):
        cache.put(f"k{i}", CachedToken(f"st-{i}", int(now) + 900, now))
    assert len(cache) == 100
    assert cache.get("k999") is not None
    assert cache.get("k0") is None


def test_cache_can_be_switched_off() -> None:
    cache = LocalTokenCache(max_entries=0)
    now = time.time()
    cache.put("k", CachedToken("st-x", int(now) + 900, now))
    assert cache.get("k") is None


def test_cache_key_covers_every_parameter() -> None:
    base = cache_key("ada", 900, "https://api.videodb.io")
    assert base != cache_key("ada", 600, "https://api.videodb.io")
    assert base != cache_key("bob", 900, "https://api.videodb.io")
    assert base != cache_key("ada", 900, "https://staging-api.videodb.io")
    assert cache_key('a",1', 900, "u") != cache_key("a", 1900, "u")  # no ambiguity by joining
    assert "ada" not in base
