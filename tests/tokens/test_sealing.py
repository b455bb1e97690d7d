"""Tokens cached in a real Redis are sealed: a changed, moved or foreign value is never served."""

from __future__ import annotations

import redis

from app.infra.redis_state import SharedState
from app.tokens.cache import LocalTokenCache
from app.tokens.sealing import TokenSealer
from app.tokens.service import TokenService
from app.tokens.shared_store import KEY_PREFIX, SharedTokenStore
from tests.fakes.minter import CountingMinter
from tests.fakes.redis_server import RedisServer

API_KEY = "sk-sealed-cache-0123456789abcdef"


def _replica(minter: CountingMinter, shared: SharedState, key: str = API_KEY) -> TokenService:
    """A fresh replica: nothing in its own memory, everything from Redis."""
    store = SharedTokenStore(shared, TokenSealer(key))
    return TokenService(minter, LocalTokenCache(100), store, "https://v", deadline=5)


def _token_keys(client: redis.Redis) -> set[bytes]:
    return {key for key in client.keys(f"{KEY_PREFIX}:tok:*") if isinstance(key, bytes)}


def _value(client: redis.Redis, key: bytes) -> bytes:
    value = client.get(key)
    assert isinstance(value, bytes)
    return value


async def test_a_second_replica_reuses_the_sealed_token(
    shared: SharedState, redis_server: RedisServer
) -> None:
    minter = CountingMinter()
    first = await _replica(minter, shared).issue("ada", 900)
    again = await _replica(minter, shared).issue("ada", 900)
    assert again.minted.token == first.minted.token
    assert minter.calls == 1
    client = redis_server.client()
    stored = b"".join(_value(client, key) for key in _token_keys(client))
    assert b"st-" not in stored  # sealed, not in clear


async def test_a_changed_value_is_minted_afresh_not_served(
    shared: SharedState, redis_server: RedisServer
) -> None:
    minter = CountingMinter()
    first = await _replica(minter, shared).issue("ada", 900)
    client = redis_server.client()
    (key,) = _token_keys(client)
    value = bytearray(_value(client, key))
    value[-1] ^= 0x01  # one bit of the tag
    client.set(key, bytes(value), keepttl=True)
    again = await _replica(minter, shared).issue("ada", 900)
    assert again.minted.token != first.minted.token
    assert minter.calls == 2


async def test_a_value_moved_to_another_users_key_does_not_open(
    shared: SharedState, redis_server: RedisServer
) -> None:
    minter = CountingMinter()
    client = redis_server.client()
    ada = await _replica(minter, shared).issue("ada", 900)
    (ada_key,) = _token_keys(client)
    await _replica(minter, shared).issue("mallory", 900)
    (mallory_key,) = _token_keys(client) - {ada_key}
    client.set(mallory_key, _value(client, ada_key), keepttl=True)  # ada's token, mallory's key
    served = await _replica(minter, shared).issue("mallory", 900)
    assert served.minted.token != ada.minted.token
    assert served.minted.token.startswith("st-mallory-")


async def test_values_sealed_under_a_rotated_videodb_key_are_minted_again(
    shared: SharedState,
) -> None:
    minter = CountingMinter()
    before = await _replica(minter, shared).issue("ada", 900)
    after = await _replica(minter, shared, key="sk-the-new-key-fedcba9876543210").issue("ada", 900)
    assert after.minted.token != before.minted.token
    assert minter.calls == 2
