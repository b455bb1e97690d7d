"""The demo's development issuer: its tokens verify against the keys it publishes, by JWKS
and by discovery, and against no other issuer's."""

from __future__ import annotations

import httpx

from app.identity.jwt import build_key_ring, decode, read_header, select_key
from app.sandbox.dev_issuer import DevIssuer

ALLOWED = frozenset({"RS256"})


async def test_its_tokens_verify_against_what_it_publishes() -> None:
    issuer = DevIssuer(issuer="http://issuer.test")
    transport = httpx.ASGITransport(app=issuer.asgi_app())
    async with httpx.AsyncClient(transport=transport, base_url=issuer.issuer) as client:
        discovery = (await client.get("/.well-known/openid-configuration")).json()
        assert discovery == {"issuer": issuer.issuer, "jwks_uri": issuer.issuer + "/jwks.json"}
        jwks = (await client.get("/jwks.json")).json()
    ring, skipped = build_key_ring(jwks, ALLOWED)
    assert (set(ring), skipped) == ({issuer.kid}, 0)
    token = issuer.mint("ada", "aud", lifetime=60, email="ada@example.com")
    header = read_header(token)
    claims = decode(
        token,
        select_key(ring, header, ALLOWED),
        header,
        audience="aud",
        issuer=issuer.issuer,
        leeway=0,
    )
    assert (claims["sub"], claims["email"]) == ("ada", "ada@example.com")
    assert claims["exp"] - claims["iat"] == 60


def test_two_issuers_never_share_a_key() -> None:
    first, second = DevIssuer(), DevIssuer()
    ring, _ = build_key_ring(first.jwks(), ALLOWED)
    assert select_key(ring, read_header(second.mint("ada", "aud")), ALLOWED) is None
