"""The token endpoint through the app, with VideoDB and the JWKS faked at the transport."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import respx
from asgi_lifespan import LifespanManager

from app.main import create_app
from app.sandbox.dev_issuer import DevIssuer
from tests.conftest import API_KEY, AUDIENCE, TOKEN_PATH, Build, bearer


async def test_issues_a_token_bound_to_the_verified_user(
    app_client: Build, issuer: DevIssuer, network: respx.MockRouter
) -> None:
    client = await app_client()
    resp = await client.post(TOKEN_PATH, headers=bearer(issuer.mint("user-42", AUDIENCE)))
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    assert resp.headers["cache-control"] == "no-store"
    body = resp.json()
    assert set(body) == {"token", "expires_at", "expires_in"}
    assert body["token"].startswith("st-")
    assert isinstance(body["expires_at"], int)
    assert 895 <= body["expires_in"] <= 900  # the default lifetime
    assert abs(body["expires_at"] - (time.time() + body["expires_in"])) <= 2

    sent = network["videodb"].calls.last.request
    assert sent.headers["x-access-token"] == API_KEY
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["x-videodb-client"].startswith("videodb-token-broker/")
    assert json.loads(sent.content) == {"user_id": "user-42", "expires_in": 900}
    assert API_KEY not in resp.text


@pytest.mark.parametrize(
    ("body", "ttl"),
    [
        (b"", 900),
        (b"{}", 900),
        (b'{"expires_in": 60}', 60),
        (b'{"expires_in": 120.0}', 120),
        (b'{"expires_in": 3600}', 3600),
    ],
)
async def test_accepts_the_three_body_shapes(
    app_client: Build, issuer: DevIssuer, network: respx.MockRouter, body: bytes, ttl: int
) -> None:
    client = await app_client()
    resp = await client.post(TOKEN_PATH, content=body, headers=bearer(issuer.mint("u", AUDIENCE)))
    assert resp.status_code == 200
    assert json.loads(network["videodb"].calls.last.request.content)["expires_in"] == ttl


@pytest.mark.parametrize(
    "body",
    [
        b'{"user_id": "someone-else"}',
        b'{"expires_in": 59}',
        b'{"expires_in": 3601}',
        b'{"expires_in": "600"}',
        b'{"expires_in": 600.5}',
        b'{"expires_in": true}',
        b'{"expires_in": null}',
        b"[]",
        b"null",
        b"not json",
        b"\n",  # whitespace alone: neither no body nor JSON
        b'{"expires_in": 1e400}',
        b'{"expires_in": ' + b"9" * 1000 + b"}",
        b"[" * 1000,
    ],
)
async def test_refuses_any_other_body_without_calling_videodb(
    app_client: Build, issuer: DevIssuer, network: respx.MockRouter, body: bytes
) -> None:
    client = await app_client()
    resp = await client.post(TOKEN_PATH, content=body, headers=bearer(issuer.mint("u", AUDIENCE)))
    assert resp.status_code == 422
    assert resp.headers["content-type"] == "application/problem+json"
    problem = resp.json()
    assert problem["code"] == "invalid_request"
    assert problem["status"] == 422
    assert problem["request_id"] == resp.headers["x-request-id"]
    assert not network["videodb"].called


async def test_range_error_names_the_range(
    app_client: Build, issuer: DevIssuer, network: respx.MockRouter
) -> None:
    client = await app_client()
    resp = await client.post(
        TOKEN_PATH, json={"expires_in": 5}, headers=bearer(issuer.mint("u", AUDIENCE))
    )
    assert "60" in resp.json()["detail"]
    assert "3600" in resp.json()["detail"]


async def test_oversized_body_is_refused(
    app_client: Build, issuer: DevIssuer, network: respx.MockRouter
) -> None:
    client = await app_client()
    resp = await client.post(
        TOKEN_PATH, content=b" " * 5000, headers=bearer(issuer.mint("u", AUDIENCE))
    )
    assert resp.status_code == 413
    assert resp.json()["code"] == "payload_too_large"
    assert not network["videodb"].called


@pytest.mark.parametrize("cookie", [None, "session_jwt"])
async def test_openapi_document_says_what_the_endpoint_needs(
    app_client: Build, make_settings: Any, cookie: str | None
) -> None:
    """A client generated from the document sends the JWT and a body in this deployment's range."""
    settings = make_settings(token_min_ttl=120, auth_cookie_name=cookie)
    client = await app_client(settings)
    document = (await client.get("/openapi.json")).json()
    operation = document["paths"][TOKEN_PATH]["post"]
    ttl = operation["requestBody"]["content"]["application/json"]["schema"]
    assert ttl["properties"]["expires_in"]["minimum"] == 120
    assert ttl["additionalProperties"] is False
    schemes = document["components"]["securitySchemes"]
    assert schemes["userJWT"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": schemes["userJWT"]["description"],
    }
    if cookie is None:
        assert operation["security"] == [{"userJWT": []}]
        assert "userJWTCookie" not in schemes
    else:
        assert operation["security"] == [{"userJWT": []}, {"userJWTCookie": []}]
        assert schemes["userJWTCookie"]["in"] == "cookie"
        assert schemes["userJWTCookie"]["name"] == cookie
        assert "X-CSRF" in schemes["userJWTCookie"]["description"]
    assert "security" not in document["paths"]["/healthz"]["get"]


async def test_unauthenticated_bad_body_is_still_401(app_client: Build) -> None:
    client = await app_client()
    resp = await client.post(TOKEN_PATH, content=b"garbage")
    assert resp.status_code == 401


async def test_a_body_in_several_pieces_is_read_whole_and_capped(
    app_client: Build, issuer: DevIssuer, network: respx.MockRouter
) -> None:
    client = await app_client()
    headers = bearer(issuer.mint("pieces", AUDIENCE))

    async def pieces(*chunks: bytes) -> Any:
        for chunk in chunks:
            yield chunk

    ok = await client.post(
        TOKEN_PATH, content=pieces(b'{"expires_in"', b": 6", b"00}"), headers=headers
    )
    assert ok.status_code == 200
    assert json.loads(network["videodb"].calls[-1].request.content)["expires_in"] == 600
    huge = await client.post(TOKEN_PATH, content=pieces(*[b" " * 600] * 3), headers=headers)
    assert huge.status_code == 413  # no Content-Length to refuse early: counted as it arrives


async def test_the_route_serves_it_with_metrics_audit_and_problems(
    make_settings: Callable[..., Any],
    issuer: DevIssuer,
    network: respx.MockRouter,
    capsys: pytest.CaptureFixture[str],
) -> None:
    app = create_app(make_settings())
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://b.test") as client:
            headers = bearer(issuer.mint("routed", AUDIENCE))
            ok = await client.post(TOKEN_PATH, json={"expires_in": 600}, headers=headers)
            refused = await client.post(TOKEN_PATH, headers=bearer("not-a-jwt"))
            metrics = (await client.get("/metrics")).text
    assert ok.status_code == 200
    assert ok.headers["cache-control"] == "no-store"
    assert set(ok.json()) == {"token", "expires_at", "expires_in"}
    assert refused.status_code == 401
    assert refused.headers["content-type"] == "application/problem+json"
    assert 'route="/v1/capture/session/token",status="200"' in metrics
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    (audit,) = [r for r in lines if r.get("event") == "token_issued"]
    assert audit["user_id"] == "routed"
    assert audit["request_id"] == ok.headers["x-request-id"]
