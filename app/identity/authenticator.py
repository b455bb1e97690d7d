"""Who is asking: credentials from the request, verified into a Principal, or a 401/403."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import structlog
from cachetools import TLRUCache
from fastapi import Request

from app.errors import (
    BrokerError,
    CsrfFailed,
    InsufficientScope,
    InvalidToken,
    MissingToken,
    OriginNotAllowed,
)
from app.identity import jwt as jwt_verification
from app.identity.jwt import TokenRejected
from app.identity.signing_keys import SigningKeys
from app.observability import metrics
from app.observability.fingerprints import fingerprint
from app.settings import Settings

MAX_USER_ID_CHARS = 256
VERIFIED_CACHE_ENTRIES = 10_000
VERIFIED_CACHE_MAX_SECONDS = 300.0

log = structlog.get_logger(logger_name=__name__)


@dataclass(frozen=True, slots=True)
class Principal:
    """A verified end user."""

    user_id: str
    scopes: frozenset[str]
    via_cookie: bool


def _scopes(claims: dict[str, Any]) -> frozenset[str]:
    found: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list):
            found.update(item for item in value if isinstance(item, str))
    return frozenset(found)


def _usable_user_id(value: object) -> bool:
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_USER_ID_CHARS
        and value.isprintable()
        and value.strip() == value
    )


@dataclass(frozen=True, slots=True)
class _Verified:
    user_id: str
    scopes: frozenset[str]
    generation: int
    valid_until: float


class VerifiedTokens:
    """Tokens that already passed every check, by SHA-256, until their exp (5 min at most).

    Desktop apps present the same JWT on every call; verifying its RSA signature and claims
    again each time was the largest cost of a cache hit (docs/performance.md). An entry is
    void once the keys change (a new generation), so a key the IdP withdrew stops working at
    the next fetch.
    """

    def __init__(self, max_entries: int = VERIFIED_CACHE_ENTRIES) -> None:
        self._entries: TLRUCache[bytes, _Verified] = TLRUCache(
            maxsize=max_entries, ttu=lambda _k, v, _now: v.valid_until, timer=time.time
        )

    def get(self, token: str, generation: int) -> _Verified | None:
        found = self._entries.get(hashlib.sha256(token.encode()).digest())
        if found is None or found.generation != generation or time.time() >= found.valid_until:
            return None
        return found

    def put(self, token: str, value: _Verified) -> None:
        self._entries[hashlib.sha256(token.encode()).digest()] = value


def _only_cookie(request: Request, name: str) -> str | None:
    """The one cookie of this name, or None; two of them is an InvalidToken.

    Starlette keeps the last of several. A site that can plant a cookie for our host (a
    sibling subdomain, a plain-HTTP page) could add its own beside the user's and choose
    which one a proxy or the broker reads: refuse the ambiguity, as for Authorization.
    """
    found = 0
    for header in request.headers.getlist("cookie"):
        for pair in header.split(";"):
            if pair.partition("=")[0].strip() == name:
                found += 1
    if found > 1:
        raise InvalidToken(f"Send exactly one cookie named {name}.")
    return request.cookies.get(name) if found else None


class Authenticator:
    """Reads the credential, checks it against the signing keys and the configured claims."""

    def __init__(self, settings: Settings, keys: SigningKeys) -> None:
        self._settings = settings
        self._keys = keys
        self._verified = VerifiedTokens()
        self._allowed = frozenset(settings.auth_algorithms)
        self._required_scopes = frozenset(settings.auth_required_scopes)
        self._allowed_origins = frozenset(settings.cors_origins)

    def _credential(self, request: Request) -> tuple[str, bool]:
        headers = request.headers.getlist("authorization")
        if len(headers) > 1:
            # A proxy may read the last where we read the first: refuse the ambiguity.
            raise InvalidToken("Send exactly one Authorization header.")
        if headers:
            scheme, _, token = headers[0].partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                raise MissingToken("Send the user's JWT as 'Authorization: Bearer <token>'.")
            return token, False
        cookie_name = self._settings.auth_cookie_name
        cookie = _only_cookie(request, cookie_name) if cookie_name else None
        if not cookie:
            raise MissingToken("Send the user's JWT as 'Authorization: Bearer <token>'.")
        # A cookie rides along on cross-site requests; the custom header cannot.
        if request.headers.get("x-csrf") != "1":
            raise CsrfFailed("A cookie credential needs the header 'X-CSRF: 1'.")
        origin = request.headers.get("origin")
        if origin is not None and origin not in self._allowed_origins:
            raise OriginNotAllowed("This origin may not use cookie credentials.")
        return cookie, True

    async def _verify(self, token: str) -> dict[str, Any]:
        header = jwt_verification.read_header(token)
        key = jwt_verification.select_key(self._keys.ring, header, self._allowed)
        if key is None:
            await self._keys.refresh_for_unknown_kid()
            key = jwt_verification.select_key(self._keys.ring, header, self._allowed)
        if key is None:
            raise TokenRejected("unknown_key", "token was not signed by a known key")
        return jwt_verification.decode(
            token,
            key,
            header,
            audience=self._settings.auth_audience,
            issuer=self._settings.auth_issuer,
            leeway=self._settings.auth_leeway_seconds,
        )

    async def authenticate(self, request: Request) -> Principal:
        """The verified Principal behind this request, or an identity error."""
        try:
            token, via_cookie = self._credential(request)
        except BrokerError as exc:
            metrics.IDENTITY_FAILURES.labels(exc.code).inc()
            raise
        generation = self._keys.generation
        known = self._verified.get(token, generation)
        if known is not None:
            return Principal(known.user_id, known.scopes, via_cookie)
        return self._principal(token, await self._claims(token), generation, via_cookie)

    async def _claims(self, token: str) -> dict[str, Any]:
        try:
            return await self._verify(token)
        except TokenRejected as exc:
            log.info("identity_rejected", reason=exc.reason, jwt=fingerprint(token))
            metrics.IDENTITY_FAILURES.labels(exc.reason).inc()
            raise InvalidToken(exc.detail) from None

    def _principal(
        self, token: str, claims: dict[str, Any], generation: int, via_cookie: bool
    ) -> Principal:
        claim = self._settings.auth_user_claim
        user_id = claims.get(claim)
        if not _usable_user_id(user_id):
            log.info("identity_rejected", reason="user_claim", jwt=fingerprint(token))
            metrics.IDENTITY_FAILURES.labels("user_claim").inc()
            raise InvalidToken(f"token has no usable '{claim}' claim (a non-empty string)")
        assert isinstance(user_id, str)
        scopes = _scopes(claims)
        missing = self._required_scopes - scopes
        if missing:
            log.info("identity_forbidden", reason="scope", user_id=user_id)
            metrics.IDENTITY_FAILURES.labels("scope").inc()
            raise InsufficientScope(
                "token lacks a required scope", " ".join(sorted(self._required_scopes))
            )
        valid_until = min(
            float(claims["exp"]) + self._settings.auth_leeway_seconds,
            time.time() + VERIFIED_CACHE_MAX_SECONDS,
        )
        self._verified.put(token, _Verified(user_id, scopes, generation, valid_until))
        return Principal(user_id=user_id, scopes=scopes, via_cookie=via_cookie)
