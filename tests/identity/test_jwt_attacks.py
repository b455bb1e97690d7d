"""Every JWT attack we know, through the endpoint: each is a 401 and VideoDB is never called."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import httpx
import pytest
import respx
from cryptography.hazmat.primitives import serialization
from jose import jwk as jose_jwk

from app.config import Settings
from app.sandbox.dev_issuer import DevIssuer
from tests.conftest import (
    API_KEY,
    AUDIENCE,
    HS_SECRET,
    ISSUER,
    JWKS_URL,
    TOKEN_PATH,
    VIDEODB,
    Build,
    SettingsFactory,
    bearer,
)
from tests.forge import (
    attacker_ec_pem,
    attacker_rsa_pem,
    b64,
    claims_for,
    raw_token,
    sign,
    tamper_payload,
)

ATTACKER_JWKS = "https://attacker.test/jwks.json"


def _public_pem(issuer: DevIssuer) -> bytes:
    key = jose_jwk.construct(issuer.public_jwk(), "RS256")
    pem: bytes = key.to_pem()
    return pem


def _hs256_with_public_key(issuer: DevIssuer) -> str:
    """The classic confusion: HMAC keyed with the RSA public key the verifier holds."""
    header = {"alg": "HS256", "typ": "JWT", "kid": issuer.kid}
    claims = claims_for(AUDIENCE, ISSUER)
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    mac = hmac.new(_public_pem(issuer), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def _attacks(issuer: DevIssuer) -> dict[str, str]:
    valid = claims_for(AUDIENCE, ISSUER)
    attacker = attacker_rsa_pem()
    kid = issuer.kid
    good = issuer.mint("victim", AUDIENCE)
    public_jwk_of_attacker = jose_jwk.construct(attacker, "RS256").public_key().to_dict()
    return {
        "alg_none": raw_token({"alg": "none", "kid": kid}, valid, b""),
        "alg_none_with_sig": raw_token({"alg": "none", "kid": kid}, valid, b"x"),
        "alg_None_case": raw_token({"alg": "None", "kid": kid}, valid, b"x"),
        "hs_rs_confusion": _hs256_with_public_key(issuer),
        "forged_signature_known_kid": sign(valid, attacker, kid=kid),
        "jku_injection": sign(valid, attacker, kid="evil", jku=ATTACKER_JWKS),
        "x5u_injection": sign(valid, attacker, kid="evil", x5u="https://attacker.test/cert.pem"),
        "embedded_jwk": sign(valid, attacker, jwk=public_jwk_of_attacker),
        "kid_path_traversal": sign(valid, attacker, kid="../../../../dev/null"),
        "kid_sql_injection": sign(valid, attacker, kid="x' UNION SELECT 'secret"),
        "kid_huge": sign(valid, attacker, kid="k" * 5000),
        "kid_not_string": raw_token({"alg": "RS256", "kid": 7}, valid),
        "tampered_payload": tamper_payload(good, sub="admin"),
        "tampered_expiry": tamper_payload(
            issuer.mint("victim", AUDIENCE, lifetime=-3600), exp=9999999999
        ),
        "signature_stripped": good.rsplit(".", 1)[0] + ".",
        "expired": issuer.mint("victim", AUDIENCE, lifetime=-120),
        "not_yet_valid": issuer.mint("victim", AUDIENCE, nbf=int(valid["iat"]) + 600),
        "issued_in_the_future": issuer.mint("victim", AUDIENCE, iat=int(valid["iat"]) + 600),
        "iat_as_string": issuer.mint("victim", AUDIENCE, iat=str(valid["iat"])),
        "wrong_audience": issuer.mint("victim", "someone-else"),
        "audience_list_without_us": issuer.mint("victim", AUDIENCE, aud=["a", "b"]),
        "wrong_issuer": issuer.mint("victim", AUDIENCE, iss="https://evil.test"),
        "missing_issuer": issuer.mint("victim", AUDIENCE, iss=None),
        "missing_exp": issuer.mint("victim", AUDIENCE, exp=None),
        "exp_as_string": issuer.mint("victim", AUDIENCE, exp="9999999999"),
        "missing_aud": issuer.mint("victim", AUDIENCE, aud=None),
        "missing_sub": issuer.mint("victim", AUDIENCE, sub=None),
        "es256_not_allowed": sign(valid, attacker_ec_pem(), alg="ES256", kid=kid),
        "rs512_for_rs256_key": sign(valid, attacker, alg="RS512", kid=kid),
        "crit_header": sign(valid, attacker, kid=kid, crit=["exp"]),
        "huge_token": "eyJhbGciOiJSUzI1NiJ9." + "A" * 100_000 + ".sig",
        "two_parts": "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0",
        "not_base64": "%%%.%%%.%%%",
        "header_not_object": b64(b"[1,2]") + ".e30.c2ln",
        "garbage": "definitely not a jwt",
        "unicode": "ü.ü.ü",
    }


def _clean(claims: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in claims.items() if v is not None}


@pytest.fixture(autouse=True)
def _mint_drops_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let `mint(..., claim=None)` remove a claim."""
    original = DevIssuer.mint

    def mint(
        self: DevIssuer, subject: str, audience: str, lifetime: int = 3600, **claims: Any
    ) -> str:
        from jose import jwt as jose_jwt

        full = jose_jwt.get_unverified_claims(original(self, subject, audience, lifetime))
        full.update(claims)
        return sign(_clean(full), self.key.pem, kid=self.kid)

    monkeypatch.setattr(DevIssuer, "mint", mint)


async def test_every_attack_is_refused_and_videodb_never_called(
    app_client: Build, issuer: DevIssuer, network: respx.MockRouter
) -> None:
    attacker_server = network.get(url__startswith="https://attacker.test").mock(
        return_value=httpx.Response(200, json={"keys": []})
    )
    client = await app_client()
    attacks = _attacks(issuer)
    for name, token in attacks.items():
        raw_header = {b"Authorization": f"Bearer {token}".encode()}
        resp = await client.post(TOKEN_PATH, headers=raw_header)
        assert resp.status_code == 401, name
        problem = resp.json()
        assert problem["code"] == "invalid_token", name
        assert resp.headers["content-type"] == "application/problem+json", name
        assert 'error="invalid_token"' in resp.headers["www-authenticate"], name
        assert token not in resp.text, name
    assert not network["videodb"].called
    assert not attacker_server.called


def _nested_setup(setup: str, make_settings: SettingsFactory) -> Settings:
    if setup == "jwks":
        return make_settings()
    if setup == "hs256":
        return make_settings(auth_jwks_url=None, auth_hs256_secret=HS_SECRET)
    providers = [
        {
            "name": name,
            "issuer": iss,
            "jwks_url": JWKS_URL,
            "audience": AUDIENCE,
            "user_id_prefix": f"{name}:",
        }
        for name, iss in (("first", ISSUER), ("second", "https://second.idp.test"))
    ]
    values: dict[str, Any] = {
        "videodb_api_key": API_KEY,
        "videodb_api": VIDEODB,
        "auth_issuers": providers,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.mark.parametrize("setup", ["jwks", "hs256", "several_issuers"])
@pytest.mark.parametrize("part", ["header", "payload"])
async def test_json_nested_past_the_parser_is_a_401_never_a_500(
    app_client: Build,
    make_settings: SettingsFactory,
    network: respx.MockRouter,
    capsys: pytest.CaptureFixture[str],
    setup: str,
    part: str,
) -> None:
    """1,500 `[` in a 2 KB token: Python's JSON parser gives up with RecursionError."""
    client = await app_client(_nested_setup(setup, make_settings))
    nested = b64(b"[" * 1500 + b"]" * 1500)
    header = b64(b'{"alg":"RS256"}')
    token = f"{nested}.e30.c2ln" if part == "header" else f"{header}.{nested}.c2ln"
    resp = await client.post(TOKEN_PATH, headers=bearer(token))
    assert resp.status_code == 401
    assert resp.json()["code"] == "invalid_token"
    assert 'error="invalid_token"' in resp.headers["www-authenticate"]
    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    assert not [r for r in logged if r.get("level") in ("error", "critical")], logged
    assert not network["videodb"].called


async def test_unknown_kid_flood_refetches_the_jwks_at_most_once(
    app_client: Build, issuer: DevIssuer, network: respx.MockRouter
) -> None:
    client = await app_client()
    fetches_at_start = network["jwks"].call_count
    attacker = attacker_rsa_pem()
    for i in range(50):
        token = sign(claims_for(AUDIENCE, ISSUER), attacker, kid=f"unknown-{i}")
        assert (await client.post(TOKEN_PATH, headers=bearer(token))).status_code == 401
    assert network["jwks"].call_count - fetches_at_start <= 1


async def test_leeway_tolerates_small_clock_skew(
    app_client: Build, issuer: DevIssuer, network: respx.MockRouter
) -> None:
    client = await app_client()
    slightly_expired = issuer.mint("u", AUDIENCE, lifetime=-10)
    assert (await client.post(TOKEN_PATH, headers=bearer(slightly_expired))).status_code == 200


def test_public_pem_is_what_the_verifier_holds(issuer: DevIssuer) -> None:
    pem = _public_pem(issuer)
    assert serialization.load_pem_public_key(pem) is not None
