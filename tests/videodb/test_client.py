"""Every way VideoDB can fail maps to the contract's 502/503/504, with no secret or raw text."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import respx
from pydantic import SecretStr

from app.sandbox.dev_issuer import DevIssuer
from app.sandbox.stand_in_videodb import token_answer
from app.videodb.answers import true_expiry
from app.videodb.client import CLIENT_ID, UPSTREAM_TOKEN_PATH, VideoDBClient, build_http_client
from tests.conftest import API_KEY, AUDIENCE, TOKEN_PATH, VIDEODB, Build, bearer

ECHO = f"invalid key {API_KEY} for user; internal trace at db01.videodb.internal"


def _ok(data: dict[str, Any]) -> httpx.Response:
    return httpx.Response(200, json={"success": True, "data": data})


async def _slow(_: httpx.Request) -> httpx.Response:
    await asyncio.sleep(5)
    return _ok({"token": "st-late", "expires_in": 900})


FAILURES: dict[str, tuple[Any, int, str]] = {
    "connection_refused": (httpx.ConnectError("refused"), 503, "upstream_unavailable"),
    "connect_timeout": (httpx.ConnectTimeout("slow"), 504, "upstream_timeout"),
    "read_timeout": (httpx.ReadTimeout("slow"), 504, "upstream_timeout"),
    "slow_past_deadline": (_slow, 504, "upstream_timeout"),
    "http_500": (httpx.Response(500, text=ECHO), 503, "upstream_unavailable"),
    "http_503": (
        httpx.Response(503, json={"success": False, "message": ECHO}),
        503,
        "upstream_unavailable",
    ),
    "http_429": (
        httpx.Response(429, json={"success": False, "message": ECHO}),
        503,
        "upstream_unavailable",
    ),
    "key_refused_401": (
        httpx.Response(401, json={"success": False, "message": ECHO}),
        502,
        "upstream_error",
    ),
    "http_400": (
        httpx.Response(400, json={"success": False, "message": ECHO}),
        502,
        "upstream_error",
    ),
    "redirect": (
        httpx.Response(302, headers={"Location": "https://evil.test"}),
        502,
        "upstream_error",
    ),
    "malformed_json": (httpx.Response(200, text="{not json " + ECHO), 502, "upstream_error"),
    "html_page": (httpx.Response(200, html="<html>" + ECHO + "</html>"), 502, "upstream_error"),
    "success_false": (
        httpx.Response(200, json={"success": False, "message": ECHO}),
        502,
        "upstream_error",
    ),
    "no_data": (httpx.Response(200, json={"success": True}), 502, "upstream_error"),
    "no_token": (_ok({"expires_in": 900}), 502, "upstream_error"),
    "token_not_st": (_ok({"token": API_KEY, "expires_in": 900}), 502, "upstream_error"),
    "token_not_string": (_ok({"token": 42, "expires_in": 900}), 502, "upstream_error"),
    "already_expired": (
        _ok({"token": "st-old", "expires_at": time.time() - 10, "expires_in": 900}),
        502,
        "upstream_error",
    ),
    "huge_body": (httpx.Response(200, text="x" * 200_000), 502, "upstream_error"),
    "deeply_nested": (
        httpx.Response(200, text="[" * 30_000 + "]" * 30_000),
        502,
        "upstream_error",
    ),
    "deeply_nested_data": (
        httpx.Response(200, text='{"success": true, "data": ' + "[" * 30_000 + "]" * 30_000 + "}"),
        502,
        "upstream_error",
    ),
    "retry_after_superscript": (
        httpx.Response(503, headers=[(b"Retry-After", "\u00b2".encode())]),
        503,
        "upstream_unavailable",
    ),
    "retry_after_arabic_digits": (
        httpx.Response(429, headers=[(b"Retry-After", "\u0663".encode())]),
        503,
        "upstream_unavailable",
    ),
    "retry_after_thousands_of_digits": (
        httpx.Response(503, headers={"Retry-After": "9" * 5000}),
        503,
        "upstream_unavailable",
    ),
    "retry_after_negative": (
        httpx.Response(503, headers={"Retry-After": "-5"}),
        503,
        "upstream_unavailable",
    ),
    "list_body": (httpx.Response(200, json=[1, 2]), 502, "upstream_error"),
}


@pytest.mark.parametrize("name", sorted(FAILURES))
async def test_upstream_failure_maps_to_contract(
    app_client: Build,
    make_settings: Callable[..., Any],
    issuer: DevIssuer,
    network: respx.MockRouter,
    name: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    behaviour, status, code = FAILURES[name]
    route = network["videodb"]
    if (callable(behaviour) and not isinstance(behaviour, httpx.Response)) or isinstance(
        behaviour, Exception
    ):
        route.mock(side_effect=behaviour)
    else:
        route.mock(return_value=behaviour)
    client = await app_client(make_settings(upstream_timeout=0.5))
    started = time.monotonic()
    resp = await client.post(TOKEN_PATH, headers=bearer(issuer.mint("u", AUDIENCE)))
    assert time.monotonic() - started < 2.0
    assert resp.status_code == status
    assert resp.headers["content-type"] == "application/problem+json"
    problem = resp.json()
    assert problem["code"] == code
    assert set(problem) >= {"type", "title", "status", "detail", "code", "request_id"}
    assert API_KEY not in resp.text
    assert "videodb.internal" not in resp.text  # not "db01": request ids are hex
    assert "evil" not in resp.text
    if status == 503:
        assert resp.headers["retry-after"].isascii()
        assert 1 <= int(resp.headers["retry-after"]) <= 300
    logs = capsys.readouterr()
    assert API_KEY not in logs.out + logs.err


async def test_short_retry_after_from_videodb_is_passed_on(
    app_client: Build, issuer: DevIssuer, network: respx.MockRouter
) -> None:
    network["videodb"].mock(return_value=httpx.Response(429, headers={"Retry-After": "7"}))
    client = await app_client()
    resp = await client.post(TOKEN_PATH, headers=bearer(issuer.mint("u", AUDIENCE)))
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "7"


async def test_reported_lifetime_is_true_when_videodb_disagrees_with_itself(
    app_client: Build, issuer: DevIssuer, network: respx.MockRouter
) -> None:
    now = time.time()
    network["videodb"].mock(
        return_value=_ok({"token": "st-x", "expires_at": now + 120.75, "expires_in": 900})
    )
    client = await app_client()
    body = (await client.post(TOKEN_PATH, headers=bearer(issuer.mint("u", AUDIENCE)))).json()
    assert body["expires_at"] == int(now + 120.75)
    assert 118 <= body["expires_in"] <= 121


def test_true_expiry_takes_the_earliest_signal() -> None:
    assert true_expiry(1000.0, 900, 1900.9, 900) == 1900
    assert true_expiry(1000.0, 900, 5000.0, 600) == 1600  # expires_at too late
    assert true_expiry(1000.0, 900, 1_900_000_000_000, 900) == 1900  # milliseconds by mistake
    assert true_expiry(1000.0, 900, None, None) == 1900  # nothing said: what we asked for
    assert true_expiry(1000.0, 900, "soon", True) == 1900  # nonsense is ignored
    assert true_expiry(1000.0, 900, 1500, None) == 1500
    # never beyond the lifetime asked for, whatever VideoDB says
    assert true_expiry(1000.0, 900, 1_900_000_000_000, None) == 1900  # ms, no expires_in
    assert true_expiry(1000.0, 900, None, 86_400) == 1900
    assert true_expiry(1000.0, 900, 2**70, None) == 1900
    assert true_expiry(1000.0, 900, 10**400, 10**400) == 1900
    assert true_expiry(1000.0, 900, float("inf"), float("nan")) == 1900


@pytest.mark.parametrize(
    "data",
    [
        b'{"token": "st-far", "expires_at": 1900000000000}',  # milliseconds, no expires_in
        b'{"token": "st-far", "expires_at": 18446744073709551616000}',  # past 64 bits
        b'{"token": "st-far", "expires_at": 1' + b"0" * 400 + b"}",
        b'{"token": "st-far", "expires_at": 1e400, "expires_in": 1e400}',
        b'{"token": "st-far", "expires_in": 31536000}',  # a year
    ],
)
async def test_an_implausible_expiry_is_never_reported_nor_kept(
    app_client: Build, issuer: DevIssuer, network: respx.MockRouter, data: bytes
) -> None:
    network["videodb"].mock(
        return_value=httpx.Response(200, content=b'{"success": true, "data": ' + data + b"}")
    )
    client = await app_client()
    resp = await client.post(
        TOKEN_PATH, json={"expires_in": 600}, headers=bearer(issuer.mint("u", AUDIENCE))
    )
    answered_at = time.time()
    assert resp.status_code == 200
    body = resp.json()
    # The broker sent the call at some moment before its answer reached us: the expiry it
    # reports is at most that moment + 600 s (a bound taken before the request assumed the
    # send came within the same second, which a busy machine does not promise).
    assert body["expires_at"] <= answered_at + 600
    assert 595 <= body["expires_in"] <= 600
    # kept for reuse only while half of that lifetime is left: the same request reuses it now
    again = await client.post(
        TOKEN_PATH, json={"expires_in": 600}, headers=bearer(issuer.mint("u", AUDIENCE))
    )
    assert again.json()["expires_at"] == body["expires_at"]
    assert network["videodb"].call_count == 1


def test_upstream_base_url_is_used_exactly(make_settings: Callable[..., Any]) -> None:
    assert make_settings(videodb_api=VIDEODB + "/").videodb_api == VIDEODB


async def test_each_call_carries_the_explicit_timeouts_and_no_client_cookies() -> None:
    seen: list[httpx.Request] = []

    def videodb(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200, json=token_answer(600), headers={"Set-Cookie": "session=other-user; Path=/"}
        )

    with respx.mock(using="httpx") as router:
        router.post(VIDEODB + UPSTREAM_TOKEN_PATH).mock(side_effect=videodb)
        http = build_http_client(4.0)
        client = VideoDBClient(http, SecretStr(API_KEY), VIDEODB, 4.0)
        await client.mint("ada", 600)
        await client.mint("bob", 600)
        kept = list(http.cookies.jar)
        await http.aclose()
    assert kept == []  # the shared client keeps no cookie at all
    first, second = seen
    assert first.extensions["timeout"] == {"connect": 3.0, "read": 4.0, "write": 4.0, "pool": 4.0}
    assert first.headers["user-agent"] == CLIENT_ID
    assert "cookie" not in second.headers  # one user's cookie never rides on another's call


PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture
def no_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """An environment that names no proxy, whatever the machine running the tests has."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


async def _serve_once(answer: bytes, seen: list[bytes]) -> tuple[asyncio.Server, str]:
    """A loopback server that records each request head and answers `answer`."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


_MINTED = b'{"success": true, "data": {"token": "st-via", "expires_in": 600}}'
_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
    len(_MINTED),
    _MINTED,
)


async def test_calls_go_through_the_proxy_the_environment_names(
    no_proxy_settings: pytest.MonkeyPatch,
) -> None:
    seen: list[bytes] = []
    proxy, proxy_url = await _serve_once(_ANSWER, seen)
    no_proxy_settings.setenv("HTTP_PROXY", proxy_url)
    http = build_http_client(2.0)
    try:
        minted = await VideoDBClient(http, SecretStr(API_KEY), "http://videodb.invalid", 2.0).mint(
            "ada", 600
        )
    finally:
        await http.aclose()
        proxy.close()
    assert minted.token == "st-via"
    assert seen[0].startswith(b"POST http://videodb.invalid/capture/session/token HTTP/1.1")
