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

from app.identity.signing_keys import JwksKeys, KeyFetchError
from app.sandbox.dev_issuer import DevIssuer
from tests.conftest import ISSUER
from tests.fakes.clock import FakeClock

DISCOVERY = ISSUER + "/.well-known/openid-configuration"


async def _keys(make_settings: Callable[..., Any], **overrides: Any) -> JwksKeys:
    settings = make_settings(**overrides)
    return JwksKeys(settings.identity_providers[0], httpx.AsyncClient(), unknown_kid_cooldown=30)


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
        ({"issuer": ISSUER, "jwks_uri": "https://[::1/jwks.json"}, "URL"),
        ({"issuer": ISSUER, "jwks_uri": "https://idp.test:99999/jwks.json"}, "URL"),
        ({"issuer": ISSUER, "jwks_uri": "https://idp.test/\u0000jwks"}, "InvalidURL"),
        ({"issuer": ISSUER, "jwks_uri": ["https://idp.test/jwks.json"]}, "no jwks_uri"),
        ({"issuer": {"nested": ISSUER}, "jwks_uri": ISSUER + "/jwks.json"}, "different issuer"),
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
        (httpx.Response(200, text="[" * 50_000 + "]" * 50_000), "not JSON"),
        (httpx.Response(200, json={"keys": {"kty": "RSA"}}), "not a JWKS"),
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
    clock = FakeClock()
    provider = make_settings().identity_providers[0]
    keys = JwksKeys(provider, httpx.AsyncClient(), unknown_kid_cooldown=30, clock=clock)
    for _ in range(10):
        await keys.refresh_for_unknown_kid()
    assert network["jwks"].call_count == 1
    clock.advance(29.9)
    await keys.refresh_for_unknown_kid()
    assert network["jwks"].call_count == 1  # still cooling down
    clock.advance(0.1)
    for _ in range(10):
        await keys.refresh_for_unknown_kid()
    assert network["jwks"].call_count == 2  # one more, then the next cool-down


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
    keys = JwksKeys(
        make_settings().identity_providers[0], httpx.AsyncClient(), unknown_kid_wait=0.05
    )
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
    keys = JwksKeys(make_settings().identity_providers[0], httpx.AsyncClient())
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
    keys = JwksKeys(make_settings().identity_providers[0], httpx.AsyncClient(), fetch_deadline=0.2)
    started = time.monotonic()
    with pytest.raises(KeyFetchError, match=r"within 0\.2 s"):
        await keys.load_once()
    assert time.monotonic() - started < 1.0
    assert not keys.ready


def _public(issuer: DevIssuer) -> dict[str, Any]:
    key: dict[str, Any] = issuer.jwks()["keys"][0]
    return key


@pytest.mark.parametrize(
    "odd",
    [
        {"alg": ["RS256"]},
        {"alg": {"name": "RS256"}},
        {"kty": ["RSA"]},
        {"use": ["sig"]},
        {"key_ops": "verify"},
        {"crv": ["P-256"], "kty": "EC"},
        {"n": 12345},
        {"e": None},
        {"kid": {"id": 1}},
    ],
)
async def test_a_key_with_members_of_odd_types_is_skipped_and_the_rest_load(
    make_settings: Callable[..., Any],
    network: respx.MockRouter,
    issuer: DevIssuer,
    odd: dict[str, Any],
) -> None:
    other = DevIssuer(issuer=ISSUER, kid="other-key")
    document = {"keys": [{**_public(other), **odd}, _public(issuer)]}
    network["jwks"].mock(return_value=httpx.Response(200, json=document))
    keys = await _keys(make_settings)
    await keys.load_once()
    assert set(keys.ring) == {issuer.kid}


async def test_every_key_odd_is_a_failed_fetch_never_an_exception_of_another_kind(
    make_settings: Callable[..., Any], network: respx.MockRouter, issuer: DevIssuer
) -> None:
    network["jwks"].mock(
        return_value=httpx.Response(200, json={"keys": [{**_public(issuer), "alg": ["RS256"]}]})
    )
    keys = await _keys(make_settings)
    with pytest.raises(KeyFetchError, match="no key usable"):
        await keys.load_once()
    assert keys.last_error is not None


async def test_the_scheduled_refresh_outlives_any_failure_and_retries_within_seconds(
    make_settings: Callable[..., Any], network: respx.MockRouter, issuer: DevIssuer
) -> None:
    """Whatever breaks a fetch (here: a bug-shaped exception from deep inside), the refresh
    retries soon, recovers once the provider does, and stops cleanly."""
    answers: list[Any] = [
        RecursionError("deep"),
        httpx.Response(200, json={"keys": [{**_public(issuer), "alg": ["RS256"]}]}),
        httpx.InvalidURL("bad"),
    ]

    def answer(_: httpx.Request) -> httpx.Response:
        item = answers.pop(0) if answers else httpx.Response(200, json=issuer.jwks())
        if isinstance(item, Exception):
            raise item
        assert isinstance(item, httpx.Response)
        return item

    network["jwks"].mock(side_effect=answer)
    keys = JwksKeys(make_settings().identity_providers[0], httpx.AsyncClient(), max_retry_delay=0.2)
    await keys.start()
    for _ in range(200):
        if keys.ready:
            break
        await asyncio.sleep(0.02)
    assert keys.ready
    assert network["jwks"].call_count == 4  # three failures, then the keys
    assert keys.last_error is None
    await keys.stop()  # clean: no exception of the failed fetches comes back here


async def test_the_generation_changes_with_the_document_and_never_repeats(
    make_settings: Callable[..., Any], network: respx.MockRouter, issuer: DevIssuer
) -> None:
    other = DevIssuer(issuer=ISSUER, kid="other-key")
    keys = await _keys(make_settings)
    seen = []
    for document in (issuer.jwks(), issuer.jwks(), other.jwks(), issuer.jwks()):
        network["jwks"].mock(return_value=httpx.Response(200, json=document))
        await keys.load_once()
        seen.append(keys.generation)
    assert seen[0] == seen[1]  # the same document again: tokens verified stay verified
    assert seen[1] < seen[2] < seen[3]  # back to the first keys: still a new generation
