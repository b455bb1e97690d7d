"""Several identity providers at once: routing by `iss`, one provider's rules and keys each."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import respx

from app.config import Settings
from app.sandbox.dev_issuer import SigningKey
from tests.conftest import API_KEY, TOKEN_PATH, VIDEODB, Build, bearer

WEB = "https://web.idp.test"
DESKTOP = "https://desktop.idp.test"
COGNITO = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Pool1"
API = "https://broker.example.com"
COGNITO_CLIENT = "4tqexampleclientid"


def _claims(issuer: str, subject: str = "alice", **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": issuer, "sub": subject, "iat": now, "exp": now + 600, **extra}


class Providers:
    """Three providers' keys, served at the transport by respx, with a fault switch each."""

    def __init__(self, network: respx.MockRouter) -> None:
        self.keys = {
            "web": SigningKey("RS256", "web-1"),
            "desktop": SigningKey("ES256", "desktop-1"),
            "cognito": SigningKey("RS256", "cognito-1"),
        }
        self.down: set[str] = set()
        self.routes = {
            "web": network.get(WEB + "/jwks.json").mock(side_effect=self._jwks("web")),
            "desktop": network.get(DESKTOP + "/keys").mock(side_effect=self._jwks("desktop")),
            "desktop_discovery": network.get(DESKTOP + "/.well-known/openid-configuration").mock(
                return_value=httpx.Response(
                    200, json={"issuer": DESKTOP, "jwks_uri": DESKTOP + "/keys"}
                )
            ),
            "cognito": network.get(COGNITO + "/.well-known/jwks.json").mock(
                side_effect=self._jwks("cognito")
            ),
        }

    def _jwks(self, name: str) -> Callable[[httpx.Request], httpx.Response]:
        def answer(_: httpx.Request) -> httpx.Response:
            if name in self.down:
                return httpx.Response(503, text="down")
            return httpx.Response(200, json=self.keys[name].jwks())

        return answer

    def fetches(self) -> int:
        return sum(route.call_count for route in self.routes.values())

    def settings(self, *, three: bool = True, **overrides: Any) -> Settings:
        entries: list[dict[str, Any]] = [
            {
                "name": "web",
                "issuer": WEB,
                "jwks_url": WEB + "/jwks.json",
                "audience": API,
                "user_id_prefix": "web:",
            },
            {
                "name": "desktop",
                "issuer": DESKTOP,
                "audience": API,
                "algorithms": ["ES256"],
                "user_id_prefix": "desktop:",
                "required_scopes": ["capture"],
            },
        ]
        if three:
            entries.append(
                {
                    "issuer": COGNITO,
                    "jwks_url": COGNITO + "/.well-known/jwks.json",
                    "audience": COGNITO_CLIENT,
                    "audience_claim": "client_id",
                    "user_id_prefix": "cognito:",
                }
            )
        values: dict[str, Any] = {
            "videodb_api_key": API_KEY,
            "videodb_api": VIDEODB,
            "auth_issuers": json.dumps(entries),
            **overrides,
        }
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    def web(self, subject: str = "alice", **extra: Any) -> str:
        return self.keys["web"].sign(_claims(WEB, subject, aud=API, **extra))

    def desktop(self, subject: str = "alice", **extra: Any) -> str:
        claims = _claims(DESKTOP, subject, aud=API, **{"scope": "capture", **extra})
        return self.keys["desktop"].sign(claims)

    def cognito_access(self, subject: str = "alice", **extra: Any) -> str:
        shape = {"client_id": COGNITO_CLIENT, "token_use": "access", **extra}
        claims = _claims(COGNITO, subject, **shape)
        return self.keys["cognito"].sign(claims)


@pytest.fixture
def idps(network: respx.MockRouter) -> Providers:
    return Providers(network)


def _minted_for(network: respx.MockRouter) -> list[str]:
    return [json.loads(call.request.content)["user_id"] for call in network["videodb"].calls]


async def test_the_same_sub_at_two_providers_is_two_videodb_users(
    app_client: Build, idps: Providers, network: respx.MockRouter
) -> None:
    client = await app_client(idps.settings())
    tokens = []
    for credential in (idps.web("alice"), idps.desktop("alice"), idps.cognito_access("alice")):
        resp = await client.post(TOKEN_PATH, headers=bearer(credential))
        assert resp.status_code == 200, resp.text
        tokens.append(resp.json()["token"])
    assert _minted_for(network) == ["web:alice", "desktop:alice", "cognito:alice"]
    assert len(set(tokens)) == 3  # three cache entries, not one user's token shared


async def test_an_issuer_that_names_no_provider_is_refused_without_a_key_fetch(
    app_client: Build, idps: Providers
) -> None:
    client = await app_client(idps.settings())
    before = idps.fetches()
    stranger = SigningKey("RS256", "web-1")  # even reusing a known kid
    for claims in (
        _claims("https://evil.test", aud=API),
        _claims(WEB + "/", aud=API),  # issuers match exactly: no trailing-slash leniency
        {k: v for k, v in _claims(WEB, aud=API).items() if k != "iss"},
        _claims(WEB.upper(), aud=API),
    ):
        resp = await client.post(TOKEN_PATH, headers=bearer(stranger.sign(claims)))
        assert resp.status_code == 401
        assert resp.json()["code"] == "invalid_token"
    assert idps.fetches() == before


async def test_a_token_signed_by_one_provider_claiming_another_is_refused(
    app_client: Build, idps: Providers
) -> None:
    client = await app_client(idps.settings())
    crossings = [
        idps.keys["web"].sign(_claims(DESKTOP, aud=API, scope="capture")),
        idps.keys["desktop"].sign(_claims(WEB, aud=API)),
        idps.keys["web"].sign(_claims(COGNITO, client_id=COGNITO_CLIENT)),
        # the kid of the provider it claims, with another provider's key behind it
        idps.keys["cognito"].sign(_claims(WEB, aud=API), kid="web-1"),
    ]
    for forged in crossings:
        resp = await client.post(TOKEN_PATH, headers=bearer(forged))
        assert resp.status_code == 401, forged
    # and each provider's own tokens still pass
    assert (await client.post(TOKEN_PATH, headers=bearer(idps.web()))).status_code == 200


async def test_each_provider_applies_its_own_rules(app_client: Build, idps: Providers) -> None:
    client = await app_client(idps.settings())

    async def status(token: str) -> int:
        resp: httpx.Response = await client.post(TOKEN_PATH, headers=bearer(token))
        return resp.status_code

    # desktop requires the capture scope; web requires none
    assert await status(idps.desktop(scope="openid")) == 403
    assert await status(idps.web(scope="openid")) == 200
    # desktop allows ES256 only: its own kid, signed RS256 by a key it never published
    assert await status(SigningKey("RS256", "desktop-1").sign(_claims(DESKTOP, aud=API))) == 401
    # Cognito's audience is client_id: an ID token (aud, no client_id) or another app's is 401
    id_token = _claims(COGNITO, aud=COGNITO_CLIENT, token_use="id")
    assert await status(idps.keys["cognito"].sign(id_token)) == 401
    assert await status(idps.cognito_access(client_id="another-app")) == 401
    # web's audience is aud: a token carrying the audience only in client_id is 401
    assert await status(idps.keys["web"].sign(_claims(WEB, client_id=API))) == 401


async def test_one_provider_down_leaves_the_others_serving(
    app_client: Build, idps: Providers
) -> None:
    idps.down.add("desktop")
    client = await app_client(idps.settings())
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    states = ready.json()["identity_providers"]
    assert states["web"] == "ok"
    assert states["cognito-idp.eu-west-1.amazonaws.com"] == "ok"
    assert states["desktop"].startswith("not loaded")
    assert (await client.post(TOKEN_PATH, headers=bearer(idps.web()))).status_code == 200
    assert (await client.post(TOKEN_PATH, headers=bearer(idps.desktop()))).status_code == 401


async def test_not_ready_only_when_no_provider_has_keys(app_client: Build, idps: Providers) -> None:
    idps.down.update({"web", "desktop"})
    client = await app_client(idps.settings(three=False), wait_ready=False)
    ready = await client.get("/readyz")
    assert ready.status_code == 503
    body = ready.json()
    assert body["checks"]["signing_keys"] == "not loaded for any identity provider"
    assert set(body["identity_providers"]) == {"web", "desktop"}


async def test_an_unknown_kid_refetches_only_its_own_providers_keys(
    app_client: Build, idps: Providers
) -> None:
    client = await app_client(idps.settings())
    web, desktop = idps.routes["web"].call_count, idps.routes["desktop"].call_count
    rotated = SigningKey("RS256", "web-2")
    for _ in range(3):  # the cool-down holds too: one refetch for the three
        token = rotated.sign(_claims(WEB, aud=API))
        assert (await client.post(TOKEN_PATH, headers=bearer(token))).status_code == 401
    assert idps.routes["web"].call_count == web + 1
    assert idps.routes["desktop"].call_count == desktop


async def test_refusals_are_counted_by_provider(app_client: Build, idps: Providers) -> None:
    client = await app_client(idps.settings())
    await client.post(TOKEN_PATH, headers=bearer(idps.desktop(scope="openid")))
    await client.post(TOKEN_PATH, headers=bearer(SigningKey().sign(_claims("https://x.test"))))
    text = (await client.get("/metrics")).text
    assert 'broker_identity_failures_total{provider="desktop",reason="scope"}' in text
    assert 'broker_identity_failures_total{provider="none",reason="issuer"}' in text
    assert 'broker_signing_keys_loaded_timestamp_seconds{provider="web"}' in text
