"""docs/identity-providers.md: each preset, read from the page itself, accepts tokens shaped as
that provider shapes them and refuses a neighbour's (another kind, audience or issuer)."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from starlette.requests import Request

from app.config import Settings
from app.errors import InsufficientScope, InvalidToken
from app.identity.authenticator import Authenticator
from app.identity.providers import IdentityProviders
from app.sandbox.dev_issuer import SigningKey
from tests.conftest import API_KEY, VIDEODB

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "identity-providers.md"


def documented_presets() -> dict[str, dict[str, Any]]:
    """Each preset's JSON block, by its `name`, exactly as the page shows it."""
    found: dict[str, dict[str, Any]] = {}
    presets = GUIDE.read_text().split("## Presets", 1)[1]
    for section in presets.split("\n### ")[1:]:
        block = re.search(r"```json\n(.*?)\n```", section, re.S)
        assert block, f"no JSON block under {section.splitlines()[0]}"
        entry = json.loads(block.group(1))
        found[entry["name"]] = entry
    return found


PRESETS = documented_presets()


@dataclass
class Shape:
    """How a provider shapes its tokens: the accepted one, the user id it yields, and
    neighbours the preset must refuse."""

    alg: str
    claims: Callable[[dict[str, Any]], dict[str, Any]]
    user: str
    neighbours: dict[str, Callable[[dict[str, Any]], dict[str, Any]]]
    headers: dict[str, Any] = field(default_factory=dict)


def _now() -> dict[str, int]:
    now = int(time.time())
    return {"iat": now, "exp": now + 3600}


def _without(claims: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in claims.items() if k not in names}


ENTRA_TENANT = "11111111-2222-3333-4444-555555555555"
COGNITO_POOL = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_AbCdEf123"
COGNITO_CLIENT = "1example23456789clientid"


def _auth0(p: dict[str, Any]) -> dict[str, Any]:
    return {
        "iss": p["issuer"],
        "sub": "auth0|64a1f0c2e4b0a1b2c3d4e5f6",
        "aud": [p["audience"], p["issuer"] + "userinfo"],
        "azp": "kPq4example9clientid",
        "scope": "openid profile capture",
        **_now(),
    }


def _okta(p: dict[str, Any]) -> dict[str, Any]:
    return {
        "ver": 1,
        "jti": "AT.x1",
        "iss": p["issuer"],
        "aud": p["audience"],
        "cid": "0oa1example",
        "uid": "00u1exampleuid",
        "scp": ["openid", "capture"],
        "sub": "alice@example.com",
        **_now(),
    }


def _entra(p: dict[str, Any]) -> dict[str, Any]:
    return {
        "aud": p["audience"],
        "iss": p["issuer"],
        "azp": "bbbbbbbb-0000-0000-0000-000000000000",
        "oid": "99999999-8888-7777-6666-555555555555",
        "sub": "pairwise-subject-per-application",
        "tid": ENTRA_TENANT,
        "scp": "capture",
        "ver": "2.0",
        **_now(),
    }


def _google(p: dict[str, Any]) -> dict[str, Any]:
    return {
        "iss": p["issuer"],
        "azp": p["audience"],
        "aud": p["audience"],
        "sub": "109876543210987654321",
        "email": "alice@example.com",
        "email_verified": True,
        **_now(),
    }


def _keycloak(p: dict[str, Any]) -> dict[str, Any]:
    return {
        "iss": p["issuer"],
        "aud": [p["audience"], "account"],
        "sub": "f1b2c3d4-0000-4000-8000-000000000001",
        "typ": "Bearer",
        "azp": "capture-web",
        "scope": "openid capture",
        **_now(),
    }


def _cognito_id(p: dict[str, Any]) -> dict[str, Any]:
    return {
        "sub": "aaaaaaaa-1111-2222-3333-444444444444",
        "aud": COGNITO_CLIENT,
        "token_use": "id",
        "cognito:username": "alice",
        "iss": p["issuer"],
        "auth_time": int(time.time()),
        **_now(),
    }


def _cognito_access(p: dict[str, Any]) -> dict[str, Any]:
    return {
        "sub": "aaaaaaaa-1111-2222-3333-444444444444",
        "client_id": COGNITO_CLIENT,
        "token_use": "access",
        "scope": "aws.cognito.signin.user.admin",
        "username": "alice",
        "iss": p["issuer"],
        **_now(),
    }


def _firebase(p: dict[str, Any]) -> dict[str, Any]:
    return {
        "iss": p["issuer"],
        "aud": p["audience"],
        "auth_time": int(time.time()),
        "user_id": "Xy12firebaseuid",
        "sub": "Xy12firebaseuid",
        "firebase": {"identities": {}, "sign_in_provider": "password"},
        **_now(),
    }


def _clerk(p: dict[str, Any]) -> dict[str, Any]:
    now = int(time.time())
    return {
        "azp": p["audience"],
        "iss": p["issuer"],
        "nbf": now - 10,
        "sid": "sess_2abcexample",
        "sub": "user_2abcexample",
        "iat": now,
        "exp": now + 60,
    }


def _supabase(p: dict[str, Any]) -> dict[str, Any]:
    return {
        "iss": p["issuer"],
        "sub": "0d1e2f3a-0000-4000-8000-00000000abcd",
        "aud": "authenticated",
        "role": "authenticated",
        "aal": "aal1",
        "session_id": str(uuid.uuid4()),
        "email": "alice@example.com",
        **_now(),
    }


SHAPES: dict[str, Shape] = {
    "auth0": Shape(
        "RS256",
        _auth0,
        "auth0:auth0|64a1f0c2e4b0a1b2c3d4e5f6",
        {  # an ID token: aud is the client id
            "id token": lambda p: {**_auth0(p), "aud": "kPq4example9clientid"},
            "issuer without its slash": lambda p: {**_auth0(p), "iss": p["issuer"].rstrip("/")},
        },
        {"typ": "JWT"},
    ),
    "okta": Shape(
        "RS256",
        _okta,
        "okta:00u1exampleuid",
        {
            "org authorization server": lambda p: {**_okta(p), "iss": "https://example.okta.com"},
            "no capture scope": lambda p: {**_okta(p), "scp": ["openid"]},
        },
    ),
    "entra": Shape(
        "RS256",
        _entra,
        "entra:99999999-8888-7777-6666-555555555555",
        {
            "v1.0 token": lambda p: {
                **_entra(p),
                "iss": f"https://sts.windows.net/{ENTRA_TENANT}/",
                "ver": "1.0",
            },
            "Graph token": lambda p: {**_entra(p), "aud": "00000003-0000-0000-c000-000000000000"},
        },
        {"typ": "JWT", "x5t": "nOo3ZDrODXEK1jKWhXslHR_KXEg"},
    ),
    "google": Shape(
        "RS256",
        _google,
        "google:109876543210987654321",
        {
            "another app's client id": lambda p: {**_google(p), "aud": "999-other.apps.google"},
            "scheme-less issuer": lambda p: {**_google(p), "iss": "accounts.google.com"},
        },
        {"typ": "JWT"},
    ),
    "keycloak": Shape(
        "RS256",
        _keycloak,
        "keycloak:f1b2c3d4-0000-4000-8000-000000000001",
        {
            "no audience mapper": lambda p: {**_keycloak(p), "aud": "account"},
            "another realm": lambda p: {**_keycloak(p), "iss": p["issuer"] + "-staging"},
        },
        {"typ": "JWT"},
    ),
    "cognito-id": Shape(
        "RS256",
        _cognito_id,
        "cognito:aaaaaaaa-1111-2222-3333-444444444444",
        {"access token": _cognito_access},
    ),
    "cognito-access": Shape(
        "RS256",
        _cognito_access,
        "cognito:aaaaaaaa-1111-2222-3333-444444444444",
        {
            "ID token": _cognito_id,
            "another app client": lambda p: {**_cognito_access(p), "client_id": "otherclient"},
        },
    ),
    "firebase": Shape(
        "RS256",
        _firebase,
        "firebase:Xy12firebaseuid",
        {
            "another project": lambda p: {
                **_firebase(p),
                "aud": "other-project",
                "iss": "https://securetoken.google.com/other-project",
            },
            "session cookie": lambda p: {
                **_firebase(p),
                "iss": "https://session.firebase.google.com/example-project",
            },
        },
        {"typ": "JWT"},
    ),
    "clerk": Shape(
        "RS256",
        _clerk,
        "clerk:user_2abcexample",
        {
            "another origin": lambda p: {**_clerk(p), "azp": "https://evil.example"},
            "no azp": lambda p: _without(_clerk(p), "azp"),
        },
        {"typ": "JWT"},
    ),
    "supabase": Shape(
        "ES256",
        _supabase,
        "supabase:0d1e2f3a-0000-4000-8000-00000000abcd",
        {
            "anon key": lambda p: (
                {"iss": p["issuer"], "role": "anon", "aud": "authenticated"} | _now()
            ),
            "another project": lambda p: {
                **_supabase(p),
                "iss": "https://zzzzzzzzzzzzzzzzzzzz.supabase.co/auth/v1",
            },
        },
        {"typ": "JWT"},
    ),
}


def test_every_preset_on_the_page_has_a_token_shape_and_the_issue_lists_them_all() -> None:
    assert set(PRESETS) == set(SHAPES)
    assert len(PRESETS) == 10  # Auth0, Okta, Entra, Google, Keycloak, Cognito x2, Firebase...


def _request(token: str) -> Request:
    headers = [(b"authorization", f"Bearer {token}".encode())]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers})


@pytest.fixture
async def served(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[Authenticator, str, SigningKey]]:
    """The preset named by the parameter, its keys served at the transport, ready."""
    name: str = request.param
    preset = PRESETS[name]
    key = SigningKey(SHAPES[name].alg)
    values: dict[str, Any] = {
        "videodb_api_key": API_KEY,
        "videodb_api": VIDEODB,
        "auth_issuers": json.dumps([preset]),
    }
    settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
    with respx.mock(assert_all_called=False) as network:
        jwks_url = preset.get("jwks_url") or preset["issuer"] + "/v1/keys-by-discovery"
        network.get(jwks_url).mock(return_value=httpx.Response(200, json=key.jwks()))
        if "jwks_url" not in preset:  # the preset relies on discovery: serve it as IdPs do
            network.get(preset["issuer"] + "/.well-known/openid-configuration").mock(
                return_value=httpx.Response(
                    200, json={"issuer": preset["issuer"], "jwks_uri": jwks_url}
                )
            )
        async with httpx.AsyncClient() as client:
            providers = IdentityProviders.from_configs(
                settings.identity_providers, client, by_issuer=True
            )
            await providers.start()
            for _ in range(200):
                if providers.ready:
                    break
                await asyncio.sleep(0.01)
            assert providers.ready, providers.states()
            yield Authenticator(providers, leeway_seconds=settings.auth_leeway_seconds), name, key
            await providers.stop()


@pytest.mark.parametrize("served", sorted(SHAPES), indirect=True)
async def test_the_documented_settings_accept_the_providers_tokens_and_refuse_neighbours(
    served: tuple[Authenticator, str, SigningKey],
) -> None:
    authenticator, name, key = served
    shape, preset = SHAPES[name], PRESETS[name]
    token = key.sign(shape.claims(preset), **shape.headers)
    principal = await authenticator.authenticate(_request(token))
    assert principal.user_id == shape.user
    assert principal.provider == name
    accepted = []
    for neighbour, claims in shape.neighbours.items():
        forged = key.sign(claims(preset), **shape.headers)  # even signed with the right key
        try:
            await authenticator.authenticate(_request(forged))
        except (InvalidToken, InsufficientScope):
            continue
        accepted.append(neighbour)
    assert accepted == [], f"{name} accepted a neighbour's token"
