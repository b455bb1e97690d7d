"""The identity check itself: verified tokens are remembered only as long as their keys are."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import respx
from starlette.requests import Request

from app.errors import InvalidToken
from app.identity.authenticator import Authenticator
from app.identity.jwt import KeyRing, build_key_ring
from app.identity.providers import IdentityProviders, Provider
from app.sandbox.dev_issuer import DevIssuer
from tests.conftest import APP_ORIGIN, AUDIENCE, HS_SECRET, ISSUER, TOKEN_PATH, Build, bearer


class _KeysReplacedInPlace:
    """A key source that refills one ring object: the same id() before and after a change,
    as a new ring can get the address of an old one that was freed."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        self._ring: KeyRing = {}
        self._generation = 0
        self.publish(jwks)

    def publish(self, jwks: dict[str, Any]) -> None:
        ring, _ = build_key_ring(jwks, frozenset({"RS256"}))
        self._ring.clear()
        self._ring.update(ring)
        self._generation += 1

    @property
    def ready(self) -> bool:
        return bool(self._ring)

    @property
    def ring(self) -> KeyRing:
        return self._ring

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def last_error(self) -> str | None:
        return None

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def refresh_for_unknown_kid(self) -> None:
        return None

    def describe(self) -> str:
        return "keys replaced in place"


def _request(token: str) -> Request:
    headers = [(b"authorization", f"Bearer {token}".encode())]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers})


async def test_a_token_of_a_withdrawn_key_is_refused_even_if_the_ring_keeps_its_address(
    make_settings: Callable[..., Any], issuer: DevIssuer
) -> None:
    keys = _KeysReplacedInPlace(issuer.jwks())
    settings = make_settings()
    provider = Provider(0, settings.identity_providers[0], keys, frozenset({"RS256"}), frozenset())
    authenticator = Authenticator(
        IdentityProviders([provider], by_issuer=False),
        leeway_seconds=settings.auth_leeway_seconds,
    )
    token = issuer.mint("alice", AUDIENCE)
    ring_address = id(keys.ring)
    assert (await authenticator.authenticate(_request(token))).user_id == "alice"
    keys.publish(DevIssuer(issuer=ISSUER, kid="successor").jwks())  # the old key withdrawn
    assert id(keys.ring) == ring_address
    with pytest.raises(InvalidToken):
        await authenticator.authenticate(_request(token))


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
