"""The in-process cache: bounded, switched off at 0, keyed by every parameter of a token."""

from __future__ import annotations

import time

from app.tokens.cache import CachedToken, LocalTokenCache, cache_key
from app.videodb.answers import MintedToken


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


def test_a_token_is_never_shown() -> None:
    """A token in a traceback's locals or a debugger's view: never printed whole."""
    now = time.time()
    kept = CachedToken("st-secret-session-0123456789", int(now) + 900, now)
    minted = MintedToken(kept.token, kept.expires_at)
    for shown in (repr(kept), str(kept), repr(minted), str(minted)):
        assert "st-secret-session-0123456789" not in shown
        assert str(kept.expires_at) in shown  # the rest is there to read
