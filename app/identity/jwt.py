"""Every use of python-jose lives here, fenced in; see docs/security.md for the reasoning.

python-jose is unmaintained and has had advisories (an HMAC secret confused with a public
key, an empty HMAC key accepted). So this module never lets it choose anything: we pick the
one key by `kid` and key type, pre-build it, pass exactly one algorithm, require the claims
ourselves as well, refuse oversized input before it is parsed, and turn every exception it
can raise into a `TokenRejected`.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from jose import jwk, jwt
from jose.backends.base import Key

from app.timestamps import plausible_seconds

MAX_TOKEN_BYTES = 8192
MAX_KID_CHARS = 256
MAX_JWKS_KEYS = 64
MIN_RSA_BITS = 2048

_RSA_ALGS = {"RS256", "RS384", "RS512"}
_PSS_ALGS: dict[str, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    "PS256": hashes.SHA256,
    "PS384": hashes.SHA384,
    "PS512": hashes.SHA512,
}
_EC_ALGS = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_PUBLIC_MEMBERS = {"kty", "kid", "alg", "use", "key_ops", "n", "e", "crv", "x", "y"}


class TokenRejected(Exception):
    """The token is not acceptable; `reason` is a short label for metrics and logs."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class TokenHeader:
    """What we read of a token before verifying it."""

    alg: str
    kid: str | None


class _RsaPssKey(Key):
    """RSA-PSS verification, which python-jose lacks; cryptography does the work."""

    def __init__(self, public_key: rsa.RSAPublicKey, algorithm: str) -> None:
        self._key = public_key
        self._hash = _PSS_ALGS[algorithm]

    def verify(self, msg: bytes, sig: bytes) -> bool:
        digest = self._hash()
        try:
            self._key.verify(
                sig,
                msg,
                padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size),
                digest,
            )
        except InvalidSignature:
            return False
        return True


# kid (None when the JWK has none) -> algorithm -> pre-built verification key
KeyRing = dict[str | None, dict[str, Any]]


def _algorithms_for(jwk_data: Mapping[str, Any], allowed: frozenset[str]) -> list[str]:
    kty = jwk_data.get("kty")
    if kty == "RSA":
        candidates = (_RSA_ALGS | set(_PSS_ALGS)) & allowed
    elif kty == "EC":
        candidates = {alg for alg, crv in _EC_ALGS.items() if crv == jwk_data.get("crv")} & allowed
    else:
        return []  # "oct" keys in a JWKS would reopen HMAC/RSA confusion: never used
    declared = jwk_data.get("alg")
    if declared is not None:
        if not isinstance(declared, str):
            return []  # "alg": ["RS256"] and the like: not a key we can read with certainty
        candidates &= {declared}
    return sorted(candidates)


def _usable_for_signatures(jwk_data: Mapping[str, Any]) -> bool:
    if jwk_data.get("use", "sig") != "sig":
        return False
    ops = jwk_data.get("key_ops")
    return ops is None or (isinstance(ops, list) and "verify" in ops)


def _build_public_key(jwk_data: Mapping[str, Any], alg: str) -> Any:
    public_only = {k: v for k, v in jwk_data.items() if k in _PUBLIC_MEMBERS}
    public_only["alg"] = alg
    if alg in _PSS_ALGS:
        rsa_key = jwk.construct({**public_only, "alg": "RS256"}, "RS256")
        prepared = getattr(rsa_key, "prepared_key", None)
        if not isinstance(prepared, rsa.RSAPublicKey):
            raise ValueError("not an RSA public key")
        key: Any = _RsaPssKey(prepared, alg)
        bits = prepared.key_size
    else:
        key = jwk.construct(public_only, alg)
        prepared = getattr(key, "prepared_key", None)
        bits = getattr(prepared, "key_size", MIN_RSA_BITS)
    if jwk_data["kty"] == "RSA" and bits < MIN_RSA_BITS:
        raise ValueError("RSA key shorter than 2048 bits")
    return key


def _build_entry(jwk_data: object, allowed: frozenset[str]) -> tuple[str | None, dict[str, Any]]:
    """One JWKS entry's kid and its pre-built keys by algorithm; none when it is not usable."""
    if not isinstance(jwk_data, Mapping) or not _usable_for_signatures(jwk_data):
        return None, {}
    kid = jwk_data.get("kid")
    if kid is not None and (not isinstance(kid, str) or len(kid) > MAX_KID_CHARS):
        return None, {}
    built: dict[str, Any] = {}
    for alg in _algorithms_for(jwk_data, allowed):
        try:
            built[alg] = _build_public_key(jwk_data, alg)
        except Exception:  # noqa: S112 - a malformed key is skipped, never fatal
            continue
    return kid, built


def build_key_ring(jwks: object, allowed: frozenset[str]) -> tuple[KeyRing, int]:
    """Pre-build verification keys from a JWKS document; returns (ring, keys skipped)."""
    if not isinstance(jwks, Mapping) or not isinstance(jwks.get("keys"), list):
        raise ValueError("not a JWKS document (no 'keys' list)")
    ring: KeyRing = {}
    skipped = 0
    for jwk_data in jwks["keys"][:MAX_JWKS_KEYS]:
        try:
            kid, built = _build_entry(jwk_data, allowed)
        except Exception:  # a member of a type we did not expect: that key is skipped
            kid, built = None, {}
        if built:
            ring.setdefault(kid, {}).update(built)
        else:
            skipped += 1
    skipped += max(0, len(jwks["keys"]) - MAX_JWKS_KEYS)
    return ring, skipped


class _AnyOfSecrets(Key):
    """HS256 under any of several secrets (the current one and the next, while a shared
    secret rotates): the signature verifies if one of them made it. python-jose is still
    handed one pre-built key and one algorithm."""

    def __init__(self, keys: Sequence[Any]) -> None:
        self._keys = tuple(keys)

    def verify(self, msg: bytes, sig: bytes) -> bool:
        return any(key.verify(msg, sig) for key in self._keys)


def build_shared_secret_ring(*secrets: bytes) -> KeyRing:
    """A ring holding shared-secret mode's HS256 key: one secret, or several accepted alike."""
    if not secrets or any(len(secret) < 32 for secret in secrets):
        # also enforced by settings; never let an empty key through
        raise ValueError("shared secret too short")
    keys = [jwk.construct(secret, "HS256") for secret in secrets]
    return {None: {"HS256": keys[0] if len(keys) == 1 else _AnyOfSecrets(keys)}}


def _b64_json(segment: str) -> Any:
    padded = segment + "=" * (-len(segment) % 4)
    return json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))


def read_header(token: str) -> TokenHeader:
    """Parse the header ourselves, with size and shape limits, before python-jose sees it."""
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenRejected("too_large", f"token longer than {MAX_TOKEN_BYTES} bytes")
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise TokenRejected("malformed", "not a signed JWT (three dot-separated parts)")
    try:
        header = _b64_json(parts[0])
    except (ValueError, UnicodeError, binascii.Error, RecursionError):  # nested past the parser
        raise TokenRejected("malformed", "token header is not base64url JSON") from None
    if not isinstance(header, dict):
        raise TokenRejected("malformed", "token header is not a JSON object")
    alg, kid = header.get("alg"), header.get("kid")
    if not isinstance(alg, str):
        raise TokenRejected("algorithm", "token header has no algorithm")
    if kid is not None and (not isinstance(kid, str) or len(kid) > MAX_KID_CHARS):
        raise TokenRejected("malformed", "token header kid is not a short string")
    if "crit" in header:
        raise TokenRejected("malformed", "critical header extensions are not supported")
    return TokenHeader(alg=alg, kid=kid)


def read_unverified_issuer(token: str) -> str | None:
    """The `iss` a token claims, before any check: used only to choose whose rules apply.

    Nothing is trusted from it: the provider it names then verifies the signature and the
    `iss` again. Call after `read_header`, which bounds the size and the shape.
    """
    try:
        claims = _b64_json(token.split(".")[1])
    except (ValueError, UnicodeError, binascii.Error, IndexError, RecursionError):
        raise TokenRejected("malformed", "token payload is not base64url JSON") from None
    if not isinstance(claims, dict):
        raise TokenRejected("malformed", "token payload is not a JSON object")
    issuer = claims.get("iss")
    return issuer if isinstance(issuer, str) else None


def select_key(ring: KeyRing, header: TokenHeader, allowed: frozenset[str]) -> Any | None:
    """The one key this token may be checked with, or None when the kid is unknown."""
    if header.alg not in allowed:
        raise TokenRejected("algorithm", "token algorithm is not allowed")
    if header.kid is not None and header.kid in ring:
        by_alg = ring[header.kid]
        if header.alg not in by_alg:
            raise TokenRejected("algorithm", "token algorithm does not match its key")
        return by_alg[header.alg]
    if header.kid is not None and list(ring) != [None]:
        return None  # an unknown kid: the caller may refresh the keys once
    candidates = [algs[header.alg] for algs in ring.values() if header.alg in algs]
    if len(candidates) > 1:
        raise TokenRejected("unknown_key", "token has no kid and several keys could apply")
    return candidates[0] if candidates else None


def decode(
    token: str,
    key: Any,
    header: TokenHeader,
    *,
    audience: str,
    issuer: str | None,
    leeway: int,
    audience_claim: str = "aud",
) -> dict[str, Any]:
    """Verify signature and claims with exactly one algorithm and one pre-built key.

    The audience is `aud` (a string or a list holding it), or, for providers that put it
    elsewhere, `client_id` (Amazon Cognito access tokens) or `azp`: then that claim must be
    exactly the audience and `aud` is not read.
    """
    in_aud = audience_claim == "aud"
    options = {
        "require_exp": True,
        "require_aud": in_aud,
        "verify_aud": in_aud,
        "require_iss": issuer is not None,
        "verify_at_hash": False,
        "leeway": leeway,
    }
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[header.alg],
            audience=audience if in_aud else None,
            issuer=issuer,
            options=options,
        )
    except Exception as exc:  # any failure inside the library is a rejection
        raise _rejection(exc) from None
    if not isinstance(claims, dict):
        raise TokenRejected("malformed", "token payload is not a JSON object")
    times: dict[str, float] = {}
    for name in ("exp", "nbf", "iat"):
        if name in claims:
            number = plausible_seconds(claims[name])
            if number is None:
                raise TokenRejected("claims", f"claim {name} is not a plausible number")
            times[name] = number
    if "exp" not in times or audience_claim not in claims:
        raise TokenRejected("claims", f"token must carry exp and {audience_claim}")
    if not in_aud and claims[audience_claim] != audience:
        raise TokenRejected("audience", f"token {audience_claim} does not match the audience")
    claims["exp"] = times["exp"]  # what the caller reads: a float, never an unbounded int
    # python-jose checks only that iat is a number; the leeway covers it like exp and nbf.
    if "iat" in times and times["iat"] > time.time() + leeway:
        raise TokenRejected("not_yet_valid", "token was issued in the future")
    if issuer is not None and claims.get("iss") != issuer:
        raise TokenRejected("issuer", "token issuer is not the configured issuer")
    return claims


def _rejection(exc: Exception) -> TokenRejected:
    name = type(exc).__name__
    text = str(exc).lower()
    if name == "ExpiredSignatureError":
        return TokenRejected("expired", "token has expired")
    if "nbf" in text or "not yet valid" in text:
        return TokenRejected("not_yet_valid", "token is not yet valid")
    if "audience" in text or '"aud"' in text:
        return TokenRejected("audience", "token audience does not match")
    if "issuer" in text or '"iss"' in text:
        return TokenRejected("issuer", "token issuer is not the configured issuer")
    if "signature" in text:
        return TokenRejected("signature", "token signature does not verify")
    if "exp" in text or "claim" in text:
        return TokenRejected("claims", "token claims are missing or malformed")
    return TokenRejected("malformed", "token could not be decoded")
