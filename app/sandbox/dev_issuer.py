"""A development identity provider: one RSA key, a JWKS, an OIDC discovery document."""

from __future__ import annotations

import time
import uuid
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwk, jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


class DevIssuer:
    """Signs JWTs with a fresh RSA key and publishes the public half as a JWKS."""

    def __init__(self, issuer: str = "", kid: str | None = None) -> None:
        self.issuer = issuer
        self.kid = kid or f"dev-{uuid.uuid4().hex[:8]}"
        self._private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._pem = self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        # Parsed once: python-jose would re-parse the PEM on every call (docs/performance.md).
        self._signing_key = jwk.construct(self._pem, "RS256")

    def public_jwk(self) -> dict[str, Any]:
        """The public key as a JWK."""
        public_pem = self._private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        data: dict[str, Any] = jwk.construct(public_pem, "RS256").to_dict()
        data.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        return data

    def jwks(self) -> dict[str, Any]:
        """The JWKS document."""
        return {"keys": [self.public_jwk()]}

    def mint(self, subject: str, audience: str, lifetime: int = 3600, **claims: Any) -> str:
        """A signed RS256 JWT for this subject."""
        now = int(time.time())
        body = {
            "sub": subject,
            "aud": audience,
            "iss": self.issuer,
            "iat": now,
            "exp": now + lifetime,
            **claims,
        }
        signed: str = jwt.encode(
            body, self._signing_key, algorithm="RS256", headers={"kid": self.kid}
        )
        return signed

    def asgi_app(self) -> Starlette:
        """Serve the JWKS and the discovery document."""

        async def jwks(_: Request) -> JSONResponse:
            return JSONResponse(self.jwks())

        async def discovery(_: Request) -> JSONResponse:
            return JSONResponse({"issuer": self.issuer, "jwks_uri": self.issuer + "/jwks.json"})

        return Starlette(
            routes=[
                Route("/jwks.json", jwks),
                Route("/.well-known/openid-configuration", discovery),
            ]
        )
