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


def _replica(
    minter: CountingMinter, shared: SharedState, key: str = API_KEY, previous: str | None = None
) -> TokenService:
    """A fresh replica: nothing in its own memory, everything from Redis."""
    store = SharedTokenStore(shared, TokenSealer(key, previous))
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


OLD_KEY = "the-encryption-key-before-the-rollout-0123456789"
NEW_KEY = "the-encryption-key-after-the-rollout-9876543210"


def _sealed_by(client: redis.Redis) -> set[str]:
    """The key ids the token entries are named by (vtb:v1:tok:<key id>:<cache key>)."""
    return {key.decode().split(":")[3] for key in _token_keys(client)}


async def test_entries_are_named_by_the_key_that_sealed_them(
    shared: SharedState, redis_server: RedisServer
) -> None:
    await _replica(CountingMinter(), shared, OLD_KEY).issue("ada", 900)
    key_id = TokenSealer(OLD_KEY).current.key_id
    assert _sealed_by(redis_server.client()) == {key_id}
    assert TokenSealer(NEW_KEY).current.key_id != key_id


async def test_a_rollout_reuses_what_old_pods_sealed_and_neither_side_overwrites(
    shared: SharedState, redis_server: RedisServer
) -> None:
    minter = CountingMinter()
    old_pod = await _replica(minter, shared, OLD_KEY).issue("ada", 900)
    # a new pod, given the previous key, reuses the old pods' token: no mint, no stampede
    new_pod = await _replica(minter, shared, NEW_KEY, previous=OLD_KEY).issue("ada", 900)
    assert new_pod.minted.token == old_pod.minted.token
    assert minter.calls == 1
    # bob first meets a new pod, then an old one (which cannot open the new key's entry)
    bob_new = await _replica(minter, shared, NEW_KEY, previous=OLD_KEY).issue("bob", 900)
    bob_old = await _replica(minter, shared, OLD_KEY).issue("bob", 900)
    assert minter.calls == 3
    client = redis_server.client()
    assert _sealed_by(client) == {TokenSealer(k).current.key_id for k in (OLD_KEY, NEW_KEY)}
    # each side still finds its own entry: neither overwrote the other's
    again_new = await _replica(minter, shared, NEW_KEY, previous=OLD_KEY).issue("bob", 900)
    again_old = await _replica(minter, shared, OLD_KEY).issue("bob", 900)
    assert (again_new.minted.token, again_old.minted.token) == (
        bob_new.minted.token,
        bob_old.minted.token,
    )
    assert minter.calls == 3


async def test_without_the_previous_key_old_entries_are_not_read(shared: SharedState) -> None:
    # rotating the key and giving no previous one is how a cache is dropped on purpose
    minter = CountingMinter()
    before = await _replica(minter, shared, OLD_KEY).issue("ada", 900)
    after = await _replica(minter, shared, NEW_KEY).issue("ada", 900)
    assert after.minted.token != before.minted.token
    assert minter.calls == 2
