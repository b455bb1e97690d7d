"""Per-user limits, the metrics endpoint, and the audit line."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from typing import Any

import pytest
import respx

from app.errors import RateLimited
from app.sandbox.dev_issuer import DevIssuer
from tests.conftest import AUDIENCE, TOKEN_PATH, bearer

Build = Callable[..., Any]


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


async def test_metrics_are_exposed_with_the_broker_prefix(
    app_client: Build, issuer: DevIssuer, network: respx.MockRouter
) -> None:
    client = await app_client()
    ada = bearer(issuer.mint("metrics-user", AUDIENCE))
    await client.post(TOKEN_PATH, headers=ada)
    await client.post(TOKEN_PATH, headers=ada)
    await client.post(TOKEN_PATH, headers=bearer("not-a-jwt"))
    resp = await client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    for name in (
        "broker_http_requests_total",
        "broker_http_request_duration_seconds",
        "broker_tokens_issued_total",
        "broker_upstream_latency_seconds",
        "broker_upstream_requests_total",
        "broker_identity_failures_total",
        "broker_rate_limited_total",
        "broker_cache_entries",
        "broker_upstream_circuit_state",
        "broker_signing_key_refreshes_total",
    ):
        assert name in text, name
    assert 'broker_tokens_issued_total{source="cache"}' in text
    assert 'broker_identity_failures_total{reason="malformed"}' in text
    assert 'route="/v1/capture/session/token"' in text
    assert "sk-" not in text


async def test_unmatched_paths_do_not_grow_label_sets(
    app_client: Build, network: respx.MockRouter
) -> None:
    client = await app_client()
    for i in range(5):
        await client.get(f"/probe-{i}")
    text = (await client.get("/metrics")).text
    assert "probe-" not in text
    assert 'route="unmatched"' in text


async def test_made_up_methods_do_not_grow_label_sets(
    app_client: Build, network: respx.MockRouter
) -> None:
    client = await app_client()
    for i in range(5):
        await client.request(f"BREW{i}", TOKEN_PATH)
    text = (await client.get("/metrics")).text
    assert "BREW" not in text
    assert 'method="other",route="/v1/capture/session/token",status="405"' in text


async def test_audit_line_for_every_issued_token(
    app_client: Build,
    make_settings: Callable[..., Any],
    issuer: DevIssuer,
    network: respx.MockRouter,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = await app_client(make_settings(trusted_proxies=["127.0.0.1"]))
    headers = {
        **bearer(issuer.mint("audited", AUDIENCE)),
        "User-Agent": "CaptureApp/2.1",
        "X-Forwarded-For": "203.0.113.9",
    }
    resp = await client.post(TOKEN_PATH, json={"expires_in": 600}, headers=headers)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    (audit,) = [r for r in lines if r.get("logger") == "app.audit"]
    assert audit["event"] == "token_issued"
    assert audit["user_id"] == "audited"
    assert audit["requested_ttl"] == 600
    assert 598 <= audit["granted_ttl"] <= 600
    assert audit["source"] == "upstream"
    assert audit["client_ip"] == "203.0.113.9"
    assert audit["user_agent"] == "CaptureApp/2.1"
    assert audit["token"].startswith("sha256:")
    assert audit["request_id"] == resp.headers["x-request-id"]


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(
    app_client: Build,
    issuer: DevIssuer,
    network: respx.MockRouter,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = await app_client()  # no trusted proxies
    headers = {**bearer(issuer.mint("spoofer", AUDIENCE)), "X-Forwarded-For": "198.51.100.1"}
    await client.post(TOKEN_PATH, headers=headers)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    (audit,) = [r for r in lines if r.get("logger") == "app.audit"]
    assert audit["client_ip"] == "127.0.0.1"


async def test_in_memory_limits_forget_idle_users_and_stay_cheap() -> None:
    from app.rate_limit import UserRateLimiter

    limiter = UserRateLimiter("2/second")
    for i in range(20_000):
        await limiter.check(f"user-{i}")
    storage = limiter.local_storage
    assert len(storage.storage) == 20_000  # one window counter per user so far
    await asyncio.sleep(2.1)  # a counter lives for two windows (it weighs the next one)
    await storage.sweep()
    assert len(storage.storage) == 0  # windows over: nothing kept per idle user
    assert len(storage.expirations) == 0


async def test_a_generous_limit_keeps_two_counters_per_user_not_one_entry_per_request() -> None:
    from app.rate_limit import UserRateLimiter

    limiter = UserRateLimiter("100000/hour")
    for _ in range(5_000):
        await limiter.check("busy-user")
    storage = limiter.local_storage
    assert len(storage.storage) <= 2  # this window's counter and, at most, the previous one
    assert sum(storage.storage.values()) == 5_000
    assert not storage.events  # no per-request timestamps


async def test_limits_slide_rather_than_reset_at_the_window_edge() -> None:
    from app.rate_limit import UserRateLimiter

    limiter = UserRateLimiter("10/second")
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
