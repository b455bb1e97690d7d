"""Every error is problem+json with its code and the request id; a bug is a 500 problem
that carries no text of the exception."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import respx
from asgi_lifespan import LifespanManager

from app.main import create_app
from app.sandbox.dev_issuer import DevIssuer
from app.tokens.service import TokenService
from tests.conftest import API_KEY, APP_ORIGIN, AUDIENCE, TOKEN_PATH, bearer


async def test_an_unexpected_failure_is_a_500_problem_without_its_text(
    make_settings: Callable[..., Any],
    issuer: DevIssuer,
    network: respx.MockRouter,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken(self: TokenService, user_id: str, ttl: int) -> None:
        raise RuntimeError(f"boom with {API_KEY}")

    monkeypatch.setattr(TokenService, "issue", broken)
    app = create_app(make_settings())
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://b.test") as client:
            headers = {**bearer(issuer.mint("ada", AUDIENCE)), "Origin": APP_ORIGIN}
            resp = await client.post(TOKEN_PATH, headers=headers)
    assert resp.status_code == 500
    assert resp.headers["access-control-allow-origin"] == APP_ORIGIN  # readable by the page
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["code"] == "internal_error"
    assert resp.json()["request_id"] == resp.headers["x-request-id"]
    assert API_KEY not in resp.text
    assert "boom" not in resp.text
    out = capsys.readouterr().out
    assert API_KEY not in out
    (logged,) = [r for r in map(json.loads, out.splitlines()) if r["event"] == "unhandled_error"]
    assert logged["request_id"] == resp.headers["x-request-id"]
    assert logged["error_type"] == "RuntimeError"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", TOKEN_PATH + "/"),
        ("GET", "/v1/capture/sessions/x/"),
        ("POST", "/v1/capture/sessions/"),
        ("GET", "/healthz/"),
        ("OPTIONS", TOKEN_PATH + "/"),
    ],
)
async def test_a_trailing_slash_is_a_404_problem_never_a_redirect_to_the_callers_host(
    app_client: Callable[..., Any],
    make_settings: Callable[..., Any],
    issuer: DevIssuer,
    network: respx.MockRouter,
    method: str,
    path: str,
) -> None:
    """Starlette answered 307 with a Location built from the Host header, in plain http."""
    client = await app_client(make_settings(capture_sessions="on"))
    headers = {**bearer(issuer.mint("ada", AUDIENCE)), "Host": "evil.example"}
    resp = await client.request(method, path, headers=headers)
    assert resp.status_code == 404
    assert "location" not in resp.headers
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["code"] == "not_found"
    assert "evil.example" not in resp.text
    assert not network["videodb"].called
