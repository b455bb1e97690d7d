"""Key sources: OIDC discovery, refusals of unsafe documents, refresh cool-down."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import respx

from app.sandbox.dev_issuer import DevIssuer
from app.signing_keys import JwksKeys, KeyFetchError
from tests.conftest import ISSUER

DISCOVERY = ISSUER + "/.well-known/openid-configuration"


async def _keys(make_settings: Callable[..., Any], **overrides: Any) -> JwksKeys:
    settings = make_settings(**overrides)
    return JwksKeys(settings, httpx.AsyncClient(), unknown_kid_cooldown=30)


async def test_discovery_finds_the_jwks(
    make_settings: Callable[..., Any], issuer: DevIssuer, network: respx.MockRouter
) -> None:
    network.get(DISCOVERY).mock(
        return_value=httpx.Response(200, json={"issuer": ISSUER, "jwks_uri": ISSUER + "/jwks.json"})
    )
    keys = await _keys(make_settings, auth_jwks_url=None)
    await keys.load_once()
    assert keys.ready
    assert issuer.kid in keys.ring
    assert "jwks.json" in keys.describe()


@pytest.mark.parametrize(
    ("document", "words"),
    [
        ({"issuer": "https://other.test", "jwks_uri": ISSUER + "/jwks.json"}, "different issuer"),
        ({"issuer": ISSUER, "jwks_uri": "http://idp.test/jwks.json"}, "https"),
        ({"issuer": ISSUER}, "no jwks_uri"),
    ],
)
async def test_unsafe_discovery_documents_are_refused(
    make_settings: Callable[..., Any], network: respx.MockRouter, document: Any, words: str
) -> None:
    network.get(DISCOVERY).mock(return_value=httpx.Response(200, json=document))
    keys = await _keys(make_settings, auth_jwks_url=None)
    with pytest.raises(KeyFetchError, match=words):
        await keys.load_once()
    assert not keys.ready


@pytest.mark.parametrize(
    ("response", "words"),
    [
        (httpx.Response(500), "HTTP 500"),
        (httpx.Response(200, text="<html>"), "not JSON"),
        (httpx.Response(200, json={"keys": [{"kty": "oct", "k": "AAAA"}]}), "no key usable"),
        (httpx.Response(200, content=b"[" + b" " * 600_000 + b"]"), "larger"),
        (httpx.Response(200, json={"nope": 1}), "not a JWKS"),
    ],
)
async def test_bad_jwks_documents_keep_the_old_keys(
    make_settings: Callable[..., Any],
    network: respx.MockRouter,
    issuer: DevIssuer,
    response: httpx.Response,
    words: str,
) -> None:
    keys = await _keys(make_settings)
    await keys.load_once()
    network["jwks"].mock(return_value=response)
    with pytest.raises(KeyFetchError, match=words):
        await keys.load_once()
    assert issuer.kid in keys.ring
    assert keys.last_error is not None


async def test_unknown_kid_refresh_is_cooled_down(
    make_settings: Callable[..., Any], network: respx.MockRouter
) -> None:
    keys = await _keys(make_settings)
    for _ in range(10):
        await keys.refresh_for_unknown_kid()
    assert network["jwks"].call_count == 1


async def test_unknown_kid_refresh_survives_an_outage(
    make_settings: Callable[..., Any], network: respx.MockRouter
) -> None:
    network["jwks"].mock(side_effect=httpx.ConnectError("down"))
    keys = await _keys(make_settings)
    await keys.refresh_for_unknown_kid()
    assert not keys.ready
    assert "ConnectError" in (keys.last_error or "")


def _slow_jwks(issuer: DevIssuer, delay: float) -> Callable[[httpx.Request], Any]:
    async def answer(_: httpx.Request) -> httpx.Response:
        await asyncio.sleep(delay)
        return httpx.Response(200, json=issuer.jwks())

    return answer


async def test_a_slow_provider_delays_unknown_kid_requests_by_the_bound_only(
    make_settings: Callable[..., Any], network: respx.MockRouter, issuer: DevIssuer
) -> None:
    network["jwks"].mock(side_effect=_slow_jwks(issuer, 0.5))
    keys = JwksKeys(make_settings(), httpx.AsyncClient(), unknown_kid_wait=0.05)
    started = time.monotonic()
    await keys.refresh_for_unknown_kid()
    assert time.monotonic() - started < 0.3  # refused in time, not after the provider
    assert not keys.ready
    for _ in range(100):  # the refetch went on without the request, and lands
        if issuer.kid in keys.ring:
            break
        await asyncio.sleep(0.05)
    assert issuer.kid in keys.ring
    await keys.stop()


async def test_requests_needing_the_same_refetch_share_it(
    make_settings: Callable[..., Any], network: respx.MockRouter, issuer: DevIssuer
) -> None:
    network["jwks"].mock(side_effect=_slow_jwks(issuer, 0.1))
    keys = JwksKeys(make_settings(), httpx.AsyncClient())
    await asyncio.gather(*(keys.refresh_for_unknown_kid() for _ in range(20)))
    assert network["jwks"].call_count == 1
    assert issuer.kid in keys.ring  # every one of them waited for it, and it arrived


async def test_a_trickling_provider_is_cut_off_at_the_whole_fetch_deadline(
    make_settings: Callable[..., Any], network: respx.MockRouter, issuer: DevIssuer
) -> None:
    document = json.dumps(issuer.jwks()).encode()

    async def trickle() -> AsyncIterator[bytes]:
        for byte in document:  # each byte well inside any per-read timeout
            await asyncio.sleep(0.02)
            yield bytes([byte])

    network["jwks"].mock(side_effect=lambda _: httpx.Response(200, content=trickle()))
    keys = JwksKeys(make_settings(), httpx.AsyncClient(), fetch_deadline=0.2)
    started = time.monotonic()
    with pytest.raises(KeyFetchError, match=r"within 0\.2 s"):
        await keys.load_once()
    assert time.monotonic() - started < 1.0
    assert not keys.ready
