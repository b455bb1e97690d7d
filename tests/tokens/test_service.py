"""Reuse while half the lifetime is left, one upstream call per key, bounded memory."""

from __future__ import annotations

import asyncio

from app.errors import UpstreamUnavailable
from app.tokens.cache import LocalTokenCache
from app.tokens.service import TokenService
from tests.fakes.clock import FakeClock
from tests.fakes.minter import CountingMinter


def _service(minter: CountingMinter, max_entries: int = 100) -> TokenService:
    """The service on the minter's clock (VideoDB's and ours agree, as they should)."""
    cache = LocalTokenCache(max_entries, minter.clock)
    return TokenService(minter, cache, None, "https://v", deadline=5, clock=minter.clock)


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


async def test_no_reuse_once_half_the_lifetime_is_gone() -> None:
    clock = FakeClock()
    minter = CountingMinter(clock=clock)
    service = _service(minter)
    await service.issue("ada", 100)
    clock.advance(49.9)
    assert (await service.issue("ada", 100)).source == "cache"
    clock.advance(0.1)
    fresh = await service.issue("ada", 100)
    assert fresh.source == "upstream"
    assert minter.calls == 2


async def test_a_short_grant_is_judged_by_its_own_lifetime() -> None:
    clock = FakeClock()
    minter = CountingMinter(granted=1, clock=clock)  # VideoDB granted far less than asked
    service = _service(minter)
    await service.issue("ada", 900)
    clock.advance(0.5)
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
