"""Craft hostile JWTs: what an attacker can build without the issuer's private key."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from jose import jwt

from app.sandbox.dev_issuer import SigningKey


def b64(data: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"sig") -> str:
    """A token with any header and claims, and a signature of our choosing."""
    return ".".join(
        [b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), b64(signature)]
    )


def claims_for(audience: str, issuer: str, subject: str = "victim", **extra: Any) -> dict[str, Any]:
    """Claims that would be valid apart from the signature."""
    now = int(time.time())
    return {"sub": subject, "aud": audience, "iss": issuer, "iat": now, "exp": now + 600, **extra}


def attacker_rsa_pem() -> str:
    """A private key the attacker owns."""
    return SigningKey("RS256").pem


def attacker_ec_pem() -> str:
    """An EC private key the attacker owns."""
    return SigningKey("ES256").pem


def sign(claims: dict[str, Any], pem: str, alg: str = "RS256", **headers: Any) -> str:
    """Sign with a key of the caller's choice."""
    signed: str = jwt.encode(claims, pem, algorithm=alg, headers=headers or None)
    return signed


def tamper_payload(token: str, **changes: Any) -> str:
    """Change claims, keep the original header and signature."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    return ".".join([header, b64(json.dumps(claims).encode()), signature])
