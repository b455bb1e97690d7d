"""Who is asking: credentials from the request, verified into a Principal, or a 401/403."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import structlog
from cachetools import TLRUCache
from fastapi import Request

from app.config.providers import NO_PROVIDER_LABEL
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
from app.identity.providers import IdentityProviders, Provider
from app.observability import metrics, tracing
from app.observability.fingerprints import fingerprint

MAX_USER_ID_CHARS = 256  # the claim's value; a provider's prefix (32 at most) comes before it
NO_PROVIDER = NO_PROVIDER_LABEL  # a refusal before the token named a provider
VERIFIED_CACHE_ENTRIES = 10_000
VERIFIED_CACHE_MAX_SECONDS = 300.0

log = structlog.get_logger(logger_name=__name__)


@dataclass(frozen=True, slots=True)
class Principal:
    """A verified end user."""

    user_id: str
    scopes: frozenset[str]
    via_cookie: bool
    provider: str = ""


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
    provider: int
    generation: int
    valid_until: float


class VerifiedTokens:
    """Tokens that already passed every check, by SHA-256, until their exp (5 min at most).

    Desktop apps present the same JWT on every call; verifying its RSA signature and claims
    again each time would be the largest part of a cache hit (docs/performance.md). An entry
    is void once its provider's keys change (a new generation), so a key the IdP withdrew
    stops working at the next fetch.
    """

    def __init__(self, max_entries: int = VERIFIED_CACHE_ENTRIES) -> None:
        self._entries: TLRUCache[bytes, _Verified] = TLRUCache(
            maxsize=max_entries, ttu=lambda _k, v, _now: v.valid_until, timer=time.time
        )

    def get(self, token: str, providers: IdentityProviders) -> _Verified | None:
        try:  # cachetools' get() asks the timer twice, through its wrapper: 3-4x this
            found = self._entries[hashlib.sha256(token.encode()).digest()]
        except KeyError:  # never there, or expired
            return None
        if (
            found.generation != providers[found.provider].keys.generation
            or time.time() >= found.valid_until
        ):
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


def _accepted(principal: Principal) -> dict[str, tracing.AttributeValue]:
    return {"broker.identity.provider": principal.provider, "broker.identity.outcome": "ok"}


def _annotate_refusal(provider: str, reason: str) -> None:
    tracing.annotate(**{"broker.identity.provider": provider, "broker.identity.outcome": reason})


class Authenticator:
    """Reads the credential, checks it against the signing keys and the configured claims."""

    def __init__(
        self,
        providers: IdentityProviders,
        *,
        leeway_seconds: int,
        cookie_name: str | None = None,
        allowed_origins: Iterable[str] = (),
    ) -> None:
        self._providers = providers
        self._leeway = leeway_seconds
        self._cookie_name = cookie_name
        self._allowed_origins = frozenset(allowed_origins)
        self._verified = VerifiedTokens()

    def _credential(self, request: Request) -> tuple[str, bool]:
        # The ASGI scope's raw headers, as request.headers.getlist would give them: a cache
        # hit reads this one header, and a Headers object would be built for it alone.
        headers = [
            v.decode("latin-1") for k, v in request.scope["headers"] if k == b"authorization"
        ]
        if len(headers) > 1:
            # A proxy may read the last where we read the first: refuse the ambiguity.
            raise InvalidToken("Send exactly one Authorization header.")
        if headers:
            scheme, _, token = headers[0].partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                raise MissingToken("Send the user's JWT as 'Authorization: Bearer <token>'.")
            return token, False
        cookie_name = self._cookie_name
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

    def _provider_for(self, token: str) -> tuple[Provider, jwt_verification.TokenHeader]:
        header = jwt_verification.read_header(token)
        if not self._providers.routes_by_issuer:
            return self._providers.route(None), header
        return self._providers.route(jwt_verification.read_unverified_issuer(token)), header

    async def _verify(
        self, token: str, provider: Provider, header: jwt_verification.TokenHeader
    ) -> dict[str, Any]:
        keys = provider.keys
        key = jwt_verification.select_key(keys.ring, header, provider.allowed)
        if key is None:
            await keys.refresh_for_unknown_kid()
            key = jwt_verification.select_key(keys.ring, header, provider.allowed)
        if key is None:
            raise TokenRejected("unknown_key", "token was not signed by a known key")
        config = provider.config
        return jwt_verification.decode(
            token,
            key,
            header,
            audience=config.audience,
            issuer=config.issuer,
            leeway=self._leeway,
            audience_claim=config.audience_claim,
        )

    async def authenticate(self, request: Request) -> Principal:
        """The verified Principal behind this request, or an identity error."""
        return await tracing.traced("broker.authenticate", self._authenticate(request), _accepted)

    async def _authenticate(self, request: Request) -> Principal:
        try:
            token, via_cookie = self._credential(request)
        except BrokerError as exc:
            metrics.IDENTITY_FAILURES.labels(NO_PROVIDER, exc.code).inc()
            tracing.annotate(**{"broker.identity.outcome": exc.code})
            raise
        known = self._verified.get(token, self._providers)
        if known is not None:
            label = self._providers[known.provider].label
            tracing.annotate(**{"broker.identity.verified_before": True})
            return Principal(known.user_id, known.scopes, via_cookie, label)
        label = NO_PROVIDER
        try:
            provider, header = self._provider_for(token)
            label = provider.label
            generation = provider.keys.generation
            claims = await self._verify(token, provider, header)
        except TokenRejected as exc:
            log.info("identity_rejected", reason=exc.reason, provider=label, jwt=fingerprint(token))
            metrics.IDENTITY_FAILURES.labels(label, exc.reason).inc()
            _annotate_refusal(label, exc.reason)
            raise InvalidToken(exc.detail) from None
        return self._principal(token, claims, provider, generation, via_cookie)

    def _principal(
        self,
        token: str,
        claims: dict[str, Any],
        provider: Provider,
        generation: int,
        via_cookie: bool,
    ) -> Principal:
        config, label = provider.config, provider.label
        claim = config.user_claim
        value = claims.get(claim)
        if not _usable_user_id(value):
            log.info(
                "identity_rejected", reason="user_claim", provider=label, jwt=fingerprint(token)
            )
            metrics.IDENTITY_FAILURES.labels(label, "user_claim").inc()
            _annotate_refusal(label, "user_claim")
            raise InvalidToken(f"token has no usable '{claim}' claim (a non-empty string)")
        assert isinstance(value, str)
        user_id = config.user_id_prefix + value
        scopes = _scopes(claims)
        missing = provider.required_scopes - scopes
        if missing:
            log.info("identity_forbidden", reason="scope", provider=label, user_id=user_id)
            metrics.IDENTITY_FAILURES.labels(label, "scope").inc()
            _annotate_refusal(label, "scope")
            raise InsufficientScope(
                "token lacks a required scope", " ".join(sorted(provider.required_scopes))
            )
        valid_until = min(
            float(claims["exp"]) + self._leeway,
            time.time() + VERIFIED_CACHE_MAX_SECONDS,
        )
        verified = _Verified(user_id, scopes, provider.index, generation, valid_until)
        self._verified.put(token, verified)
        return Principal(user_id=user_id, scopes=scopes, via_cookie=via_cookie, provider=label)
