"""Signing keys of any algorithm an identity provider uses, with their public JWK."""

from __future__ import annotations

import uuid
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwk, jwt

_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "ES256": ec.SECP256R1,
    "ES384": ec.SECP384R1,
    "ES512": ec.SECP521R1,
}


class ProviderKey:
    """One private key; `sign` adds the `kid` header as providers do."""

    def __init__(self, alg: str = "RS256", kid: str | None = None) -> None:
        self.alg = alg
        self.kid = kid or uuid.uuid4().hex
        private: Any = (
            ec.generate_private_key(_CURVES[alg]())
            if alg in _CURVES
            else rsa.generate_private_key(public_exponent=65537, key_size=2048)
        )
        self._pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        public_pem = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self._public: dict[str, Any] = jwk.construct(public_pem, alg).to_dict()
        self._private: dict[str, Any] = jwk.construct(self._pem, alg).to_dict()

    def public_jwk(self) -> dict[str, Any]:
        """The public half as a provider publishes it."""
        return {**self._public, "kid": self.kid, "use": "sig", "alg": self.alg}

    def private_jwk(self) -> dict[str, Any]:
        """The whole key as a JWK, for a provider that signs with it (oidc-provider)."""
        whole = {k: v.decode() if isinstance(v, bytes) else v for k, v in self._private.items()}
        return {**whole, "kid": self.kid, "use": "sig", "alg": self.alg}

    def jwks(self) -> dict[str, Any]:
        """A JWKS document holding this key."""
        return {"keys": [self.public_jwk()]}

    def sign(self, claims: dict[str, Any], **headers: Any) -> str:
        """A JWT of these claims, with `kid` and any extra header (typ, x5t...)."""
        signed: str = jwt.encode(
            claims, self._pem, algorithm=self.alg, headers={"kid": self.kid, **headers}
        )
        return signed
