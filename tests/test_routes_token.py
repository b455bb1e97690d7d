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
from tests.conftest import API_KEY, APP_ORIGIN, AUDIENCE, HS_SECRET, TOKEN_PATH, bearer

Build = Callable[..., Any]


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


async def test_missing_credentials_is_401_with_challenge(app_client: Build) -> None:
    client = await app_client()
    for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer "}):
        resp = await client.post(TOKEN_PATH, headers=headers)
        assert resp.status_code == 401
        assert resp.json()["code"] == "missing_token"
        assert resp.headers["www-authenticate"].startswith("Bearer ")


async def test_two_authorization_headers_are_refused_whichever_comes_first(
    app_client: Build, issuer: DevIssuer, network: respx.MockRouter
) -> None:
    """A proxy in front may read the last header where we read the first: no ambiguity."""
    client = await app_client()
    victim, attacker = issuer.mint("victim", AUDIENCE), issuer.mint("attacker", AUDIENCE)
    for pair in ((victim, attacker), (attacker, victim), (victim, victim)):
        headers = [("Authorization", f"Bearer {pair[0]}"), ("Authorization", f"Bearer {pair[1]}")]
        resp = await client.post(TOKEN_PATH, headers=headers)
        assert resp.status_code == 401
        assert resp.json()["code"] == "invalid_token"
        assert "exactly one Authorization header" in resp.json()["detail"]
    assert not network["videodb"].called


async def test_unauthenticated_bad_body_is_still_401(app_client: Build) -> None:
    client = await app_client()
    resp = await client.post(TOKEN_PATH, content=b"garbage")
    assert resp.status_code == 401


async def test_required_scopes_give_403(
    app_client: Build,
    make_settings: Callable[..., Any],
    issuer: DevIssuer,
    network: respx.MockRouter,
) -> None:
    client = await app_client(make_settings(auth_required_scopes=["capture:write", "tokens"]))
    partial = issuer.mint("u", AUDIENCE, scope="capture:write")
    resp = await client.post(TOKEN_PATH, headers=bearer(partial))
    assert resp.status_code == 403
    assert resp.json()["code"] == "insufficient_scope"
    assert 'error="insufficient_scope"' in resp.headers["www-authenticate"]
    assert not network["videodb"].called
    for claims in ({"scope": "tokens capture:write openid"}, {"scp": ["tokens", "capture:write"]}):
        ok = await client.post(TOKEN_PATH, headers=bearer(issuer.mint("u", AUDIENCE, **claims)))
        assert ok.status_code == 200


async def test_custom_user_claim_becomes_user_id(
    app_client: Build,
    make_settings: Callable[..., Any],
    issuer: DevIssuer,
    network: respx.MockRouter,
) -> None:
    client = await app_client(make_settings(auth_user_claim="email"))
    ok = await client.post(
        TOKEN_PATH, headers=bearer(issuer.mint("sub-1", AUDIENCE, email="ada@example.com"))
    )
    assert ok.status_code == 200
    assert json.loads(network["videodb"].calls.last.request.content)["user_id"] == "ada@example.com"
    for bad in ({}, {"email": 42}, {"email": ""}, {"email": ["a"]}, {"email": "x\n"}):
        resp = await client.post(TOKEN_PATH, headers=bearer(issuer.mint("s", AUDIENCE, **bad)))
        assert resp.status_code == 401
        assert resp.json()["code"] == "invalid_token"
    assert network["videodb"].call_count == 1


async def test_shared_secret_mode(
    app_client: Build, make_settings: Callable[..., Any], network: respx.MockRouter
) -> None:
    from jose import jwt

    settings = make_settings(auth_jwks_url=None, auth_hs256_secret=HS_SECRET)
    client = await app_client(settings)
    now = int(time.time())
    claims = {"sub": "u1", "aud": AUDIENCE, "iss": settings.auth_issuer, "exp": now + 60}
    good = jwt.encode(claims, HS_SECRET, algorithm="HS256")
    assert (await client.post(TOKEN_PATH, headers=bearer(good))).status_code == 200
    wrong = jwt.encode(claims, HS_SECRET + "x", algorithm="HS256")
    assert (await client.post(TOKEN_PATH, headers=bearer(wrong))).status_code == 401
    hs512 = jwt.encode(claims, HS_SECRET, algorithm="HS512")
    assert (await client.post(TOKEN_PATH, headers=bearer(hs512))).status_code == 401
    assert network["videodb"].call_count == 1


def _hs256_raw(payload: str) -> str:
    """A validly signed HS256 token whose payload is exactly this JSON text."""
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(payload.encode())
    mac = hmac.new(HS_SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(mac)


@pytest.mark.parametrize(
    "times",
    [
        '"exp": 1{zeros}',  # 10**400, an int no float can hold
        '"exp": {soon}, "iat": 1{zeros}',
        '"exp": {soon}, "nbf": -1{zeros}',
        '"exp": 1e400',  # a float that parses as infinity
        '"exp": {soon}, "iat": -1e400',
        '"exp": 1e17',  # finite, but past any plausible time
        '"exp": {soon}.5e0, "iat": NaN',
        '"exp": {soon}, "nbf": true',
    ],
)
async def test_a_time_claim_of_any_size_is_a_401_never_a_500(
    app_client: Build, make_settings: Callable[..., Any], network: respx.MockRouter, times: str
) -> None:
    settings = make_settings(auth_jwks_url=None, auth_hs256_secret=HS_SECRET)
    client = await app_client(settings)
    claims = times.format(zeros="0" * 400, soon=int(time.time()) + 60)
    token = _hs256_raw(
        f'{{"sub": "u1", "aud": "{AUDIENCE}", "iss": "{settings.auth_issuer}", {claims}}}'
    )
    resp = await client.post(TOKEN_PATH, headers=bearer(token))
    assert resp.status_code == 401, resp.text
    assert resp.json()["code"] == "invalid_token"
    assert not network["videodb"].called
    # and a float time claim within reason is an ordinary one
    soon = time.time() + 60
    ok = _hs256_raw(
        f'{{"sub": "u1", "aud": "{AUDIENCE}", "iss": "{settings.auth_issuer}", '
        f'"exp": {soon}, "iat": {time.time() - 1.5}}}'
    )
    assert (await client.post(TOKEN_PATH, headers=bearer(ok))).status_code == 200


class TestCookieMode:
    async def _client(self, app_client: Build, make_settings: Callable[..., Any]) -> Any:
        return await app_client(make_settings(auth_cookie_name="session"))

    async def test_cookie_with_csrf_header_and_allowed_origin(
        self,
        app_client: Build,
        make_settings: Callable[..., Any],
        issuer: DevIssuer,
        network: respx.MockRouter,
    ) -> None:
        client = await self._client(app_client, make_settings)
        client.cookies.set("session", issuer.mint("cookie-user", AUDIENCE))
        resp = await client.post(TOKEN_PATH, headers={"X-CSRF": "1", "Origin": APP_ORIGIN})
        assert resp.status_code == 200
        assert resp.headers["access-control-allow-credentials"] == "true"
        no_origin = await client.post(TOKEN_PATH, headers={"X-CSRF": "1"})
        assert no_origin.status_code == 200

    async def test_cookie_without_csrf_header(
        self,
        app_client: Build,
        make_settings: Callable[..., Any],
        issuer: DevIssuer,
        network: respx.MockRouter,
    ) -> None:
        client = await self._client(app_client, make_settings)
        client.cookies.set("session", issuer.mint("cookie-user", AUDIENCE))
        for csrf in ({}, {"X-CSRF": "0"}, {"X-CSRF": "true"}):
            resp = await client.post(TOKEN_PATH, headers=csrf)
            assert resp.status_code == 403
            assert resp.json()["code"] == "csrf_failed"
        assert not network["videodb"].called

    async def test_cookie_from_a_foreign_origin(
        self,
        app_client: Build,
        make_settings: Callable[..., Any],
        issuer: DevIssuer,
        network: respx.MockRouter,
    ) -> None:
        client = await self._client(app_client, make_settings)
        client.cookies.set("session", issuer.mint("cookie-user", AUDIENCE))
        resp = await client.post(
            TOKEN_PATH, headers={"X-CSRF": "1", "Origin": "https://evil.example"}
        )
        assert resp.status_code == 403
        assert resp.json()["code"] == "origin_not_allowed"
        assert not network["videodb"].called

    @pytest.mark.parametrize(
        "cookie_headers",
        [
            ["session={victim}; session={attacker}"],
            ["session={victim}", "other=1; session={attacker}"],
            ["session={victim};session={attacker}"],
        ],
    )
    async def test_two_cookies_of_the_name_are_refused(
        self,
        app_client: Build,
        make_settings: Callable[..., Any],
        issuer: DevIssuer,
        network: respx.MockRouter,
        cookie_headers: list[str],
    ) -> None:
        """A planted cookie beside the user's must not choose whose token is minted."""
        client = await self._client(app_client, make_settings)
        victim, attacker = issuer.mint("victim", AUDIENCE), issuer.mint("attacker", AUDIENCE)
        headers = [("X-CSRF", "1")] + [
            ("Cookie", h.format(victim=victim, attacker=attacker)) for h in cookie_headers
        ]
        resp = await client.post(TOKEN_PATH, headers=headers)
        assert resp.status_code == 401
        assert resp.json()["code"] == "invalid_token"
        assert "exactly one cookie named session" in resp.json()["detail"]
        assert victim not in resp.text
        assert attacker not in resp.text
        assert not network["videodb"].called
        # the same user with one cookie, beside others of other names, is served
        one = await client.post(
            TOKEN_PATH, headers=[("X-CSRF", "1"), ("Cookie", f"a=1; session={victim}; b=2")]
        )
        assert one.status_code == 200

    async def test_cookie_ignored_when_mode_off(self, app_client: Build, issuer: DevIssuer) -> None:
        client = await app_client()
        client.cookies.set("session", issuer.mint("cookie-user", AUDIENCE))
        resp = await client.post(TOKEN_PATH, headers={"X-CSRF": "1"})
        assert resp.status_code == 401
        assert resp.json()["code"] == "missing_token"


async def test_an_unexpected_failure_is_a_500_problem_without_its_text(
    make_settings: Callable[..., Any],
    issuer: DevIssuer,
    network: respx.MockRouter,
    capsys: pytest.CaptureFixture[str],
) -> None:
    app = create_app(make_settings())
    async with LifespanManager(app) as manager:

        async def broken(user_id: str, ttl: int) -> None:
            raise RuntimeError(f"boom with {API_KEY}")

        app.state.token_endpoint.tokens.issue = broken
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


async def test_the_declared_route_serves_the_same_without_the_fast_path(
    make_settings: Callable[..., Any],
    issuer: DevIssuer,
    network: respx.MockRouter,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from app.token_fast_path import TokenFastPath

    app = create_app(make_settings())
    # Starlette types a middleware entry's cls as a factory, so compare through Any.
    without = [m for m in app.user_middleware if getattr(m, "cls", None) is not TokenFastPath]
    app.user_middleware = without
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


@pytest.mark.parametrize(
    ("method", "path", "with_bearer", "status"),
    [
        ("POST", TOKEN_PATH, True, 200),
        ("POST", TOKEN_PATH, False, 401),
        ("GET", TOKEN_PATH, True, 405),
        ("GET", "/nope", False, 404),
        ("GET", "/healthz", False, 200),
        ("GET", "/readyz", False, 200),
        ("GET", "/metrics", False, 200),
        ("GET", "/openapi.json", False, 200),
    ],
)
async def test_every_response_carries_the_security_headers(
    app_client: Build,
    issuer: DevIssuer,
    network: respx.MockRouter,
    method: str,
    path: str,
    with_bearer: bool,
    status: int,
) -> None:
    """The OWASP REST set: nothing sniffed, framed, loaded from, or stored by a cache."""
    client = await app_client()
    headers = bearer(issuer.mint("u", AUDIENCE)) if with_bearer else {}
    resp = await client.request(method, path, headers=headers)
    assert resp.status_code == status
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
    assert resp.headers["x-frame-options"] == "DENY"
    assert resp.headers["cache-control"] == "no-store"
    assert len(resp.headers["x-request-id"]) == 32
    assert "strict-transport-security" not in resp.headers  # plain HTTP: HSTS means nothing


async def test_a_preflight_carries_the_security_headers_too(
    app_client: Build, network: respx.MockRouter
) -> None:
    client = await app_client()
    resp = await client.options(
        TOKEN_PATH,
        headers={"Origin": APP_ORIGIN, "Access-Control-Request-Method": "POST"},
    )
    assert resp.status_code == 200
    assert resp.headers["access-control-allow-origin"] == APP_ORIGIN
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["x-frame-options"] == "DENY"
