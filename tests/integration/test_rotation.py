"""Rotations an operator runs, each as docs/operations.md tells it, with the broker as
processes: a shared HS256 secret (current and next), and the Redis encryption key (entries
named by the key that sealed them, the previous one read during a rollout)."""

from __future__ import annotations

import time

import httpx
import pytest
from jose import jwt

from app.sandbox.stand_in_videodb import StandInVideoDB
from harness.broker_process import BrokerProcess
from harness.servers import ThreadedServer
from tests.fakes.redis_server import RedisServer
from tests.integration.conftest import API_KEY, AUDIENCE, TOKEN_PATH, assert_no_secret_in

pytestmark = pytest.mark.integration

OLD_SECRET = "the-shared-secret-before-rotation-0123456789"
NEW_SECRET = "the-shared-secret-after-rotation-9876543210"
OLD_KEY = "redis-encryption-key-before-the-rollout-012345"
NEW_KEY = "redis-encryption-key-after-the-rollout-6789abcd"


def _shared_secret_broker(videodb_url: str, **secrets: str) -> BrokerProcess:
    settings = {
        "VIDEO_DB_API_KEY": API_KEY,
        "VIDEO_DB_API": videodb_url,
        "BROKER_AUTH_AUDIENCE": AUDIENCE,
        "BROKER_RATE_LIMIT": "1000/minute",
        **secrets,
    }
    return BrokerProcess(settings).wait_ready()


def _signed_with(secret: str, user: str = "rotating-user") -> dict[str, str]:
    now = int(time.time())
    claims = {"sub": user, "aud": AUDIENCE, "iat": now, "exp": now + 300}
    return {"Authorization": f"Bearer {jwt.encode(claims, secret, algorithm='HS256')}"}


def _status(broker: BrokerProcess, headers: dict[str, str]) -> int:
    return httpx.post(broker.url + TOKEN_PATH, headers=headers, timeout=10).status_code


def test_a_shared_secret_rotates_without_a_401(
    videodb: StandInVideoDB, videodb_server: tuple[StandInVideoDB, ThreadedServer]
) -> None:
    _, server = videodb_server
    old, new = _signed_with(OLD_SECRET), _signed_with(NEW_SECRET)
    # Before: the broker knows the one secret the issuer signs with.
    before = _shared_secret_broker(server.url, BROKER_AUTH_HS256_SECRET=OLD_SECRET)
    # Step 1: pods rolled out with the next secret beside it; old and new pods serve together,
    # and the issuer still signs with the old secret, which both take.
    step1 = _shared_secret_broker(
        server.url, BROKER_AUTH_HS256_SECRET=OLD_SECRET, BROKER_AUTH_HS256_NEXT_SECRET=NEW_SECRET
    )
    # Step 3: once the issuer signs with the new secret (step 2) and the old tokens expired,
    # the new secret becomes the only one; step-1 pods and these serve together.
    step3 = _shared_secret_broker(server.url, BROKER_AUTH_HS256_SECRET=NEW_SECRET)
    try:
        assert [_status(b, old) for b in (before, step1)] == [200, 200]
        assert [_status(b, new) for b in (step1, step3)] == [200, 200]
        # what the order of the steps avoids: a pod refusing what the issuer signs meanwhile
        assert _status(before, new) == 401
        assert _status(step3, old) == 401
        assert "2 shared HS256 secrets" in step1.output()  # the broker_started line says so
    finally:
        for broker in (before, step1, step3):
            assert broker.terminate() == 0
            assert OLD_SECRET not in broker.output()
            assert NEW_SECRET not in broker.output()


def _redis_broker(videodb_url: str, redis_url: str, **keys: str) -> BrokerProcess:
    return _shared_secret_broker(
        videodb_url,
        BROKER_AUTH_HS256_SECRET=OLD_SECRET,
        BROKER_REDIS_URL=redis_url,
        BROKER_CACHE_MAX_ENTRIES="0",  # every request asks Redis: what the rollout is about
        **keys,
    )


def _token(broker: BrokerProcess, user: str) -> str:
    resp = httpx.post(broker.url + TOKEN_PATH, headers=_signed_with(OLD_SECRET, user), timeout=10)
    assert resp.status_code == 200, resp.text
    token: str = resp.json()["token"]
    return token


def test_a_redis_encryption_key_rollout_neither_stampedes_nor_overwrites(
    videodb: StandInVideoDB,
    videodb_server: tuple[StandInVideoDB, ThreadedServer],
    redis_server: RedisServer,
) -> None:
    _, server = videodb_server
    old = _redis_broker(server.url, redis_server.url, BROKER_REDIS_ENCRYPTION_KEY=OLD_KEY)
    new = _redis_broker(
        server.url,
        redis_server.url,
        BROKER_REDIS_ENCRYPTION_KEY=NEW_KEY,
        BROKER_REDIS_PREVIOUS_ENCRYPTION_KEY=OLD_KEY,
    )
    try:
        # what old pods cached, new pods reuse: no VideoDB call for it
        ada = _token(old, "ada")
        assert _token(new, "ada") == ada
        assert len(videodb.calls) == 1
        # a token a new pod cached is sealed under a name old pods do not read or write
        bob_new = _token(new, "bob")
        bob_old = _token(old, "bob")
        assert len(videodb.calls) == 3
        for _ in range(3):  # each side keeps reusing its own: nobody overwrote anything
            assert (_token(new, "bob"), _token(old, "bob")) == (bob_new, bob_old)
        assert len(videodb.calls) == 3
        stored = redis_server.client().keys("vtb:v1:tok:*")
        names = {str(k, "ascii").rsplit(":", 1)[0] for k in stored if isinstance(k, bytes)}
        assert len(names) == 2  # vtb:v1:tok:<key id>, one per sealing key
    finally:
        for broker in (old, new):
            assert broker.terminate() == 0
            assert_no_secret_in(broker.output())
            assert OLD_KEY not in broker.output()
            assert NEW_KEY not in broker.output()


def test_the_videodb_key_rotates_under_its_own_encryption_key_without_a_cache_miss(
    videodb: StandInVideoDB,
    videodb_server: tuple[StandInVideoDB, ThreadedServer],
    redis_server: RedisServer,
) -> None:
    # With BROKER_REDIS_ENCRYPTION_KEY set, Redis's entries no longer hang on the VideoDB key:
    # pods rolled out with a new key reuse the tokens the old pods cached (still valid).
    _, server = videodb_server
    before = _redis_broker(server.url, redis_server.url, BROKER_REDIS_ENCRYPTION_KEY=OLD_KEY)
    env = {"BROKER_REDIS_ENCRYPTION_KEY": OLD_KEY, "VIDEO_DB_API_KEY": "sk-the-new-key-0123456789"}
    after = _redis_broker(server.url, redis_server.url, **env)
    try:
        cached = _token(before, "ada")
        assert _token(after, "ada") == cached
        assert len(videodb.calls) == 1
    finally:
        for broker in (before, after):
            assert broker.terminate() == 0
