"""A development identity provider: its signing key, a JWKS, an OIDC discovery document.

`SigningKey` is the one maker of signing keys for the sandbox, the tests and the benchmarks:
RSA (RS256-RS512) or EC (ES256-ES512), with the JWKs a provider publishes.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwk, jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "ES256": ec.SECP256R1,
    "ES384": ec.SECP384R1,
    "ES512": ec.SECP521R1,
}


class SigningKey:
    """A fresh private key; `sign` adds its `kid` header, as providers do."""

    def __init__(self, alg: str = "RS256", kid: str | None = None, *, bits: int = 2048) -> None:
        self.alg = alg
        self.kid = kid or f"dev-{uuid.uuid4().hex[:8]}"
        private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = (
            ec.generate_private_key(_CURVES[alg]())
            if alg in _CURVES
            else rsa.generate_private_key(public_exponent=65537, key_size=bits)
        )
        self.pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        public_pem = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        # Parsed once: python-jose would parse the PEM again for every token signed with it.
        self._signing_key = jwk.construct(self.pem, alg)
        self._public: dict[str, Any] = jwk.construct(public_pem, alg).to_dict()

    def public_jwk(self) -> dict[str, Any]:
        """The public half as a provider publishes it."""
        return {**self._public, "kid": self.kid, "use": "sig", "alg": self.alg}

    def private_jwk(self) -> dict[str, Any]:
        """The whole key as a JWK, for a provider that signs with it (oidc-provider)."""
        whole = self._signing_key.to_dict()
        text = {k: v.decode() if isinstance(v, bytes) else v for k, v in whole.items()}
        return {**text, "kid": self.kid, "use": "sig", "alg": self.alg}

    def jwks(self) -> dict[str, Any]:
        """A JWKS document holding this key."""
        return {"keys": [self.public_jwk()]}

    def sign(self, claims: dict[str, Any], **headers: Any) -> str:
        """A JWT of these claims, with `kid` and any extra header (typ, x5t...)."""
        signed: str = jwt.encode(
            claims, self._signing_key, algorithm=self.alg, headers={"kid": self.kid, **headers}
        )
        return signed


class DevIssuer:
    """Signs JWTs with a fresh RSA key and publishes the public half as a JWKS."""

    def __init__(self, issuer: str = "", kid: str | None = None) -> None:
        self.issuer = issuer
        self.key = SigningKey("RS256", kid)
        self.kid = self.key.kid

    def public_jwk(self) -> dict[str, Any]:
        """The public key as a JWK."""
        return self.key.public_jwk()

    def jwks(self) -> dict[str, Any]:
        """The JWKS document."""
        return self.key.jwks()

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
        return self.key.sign(body)

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
