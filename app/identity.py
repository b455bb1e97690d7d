"""Who is asking: credentials from the request, verified into a Principal, or a 401/403."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import structlog
from fastapi import Depends, Request

from app import jwt_verification, metrics
from app.errors import (
    BrokerError,
    CsrfFailed,
    InsufficientScope,
    InvalidToken,
    MissingToken,
    OriginNotAllowed,
)
from app.fingerprint import fingerprint
from app.jwt_verification import TokenRejected
from app.settings import Settings
from app.signing_keys import SigningKeys

MAX_USER_ID_CHARS = 256

log = structlog.get_logger("app.identity")


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


class Authenticator:
    """Reads the credential, checks it against the signing keys and the configured claims."""

    def __init__(self, settings: Settings, keys: SigningKeys) -> None:
        self._settings = settings
        self._keys = keys
        self._allowed = frozenset(settings.auth_algorithms)
        self._required_scopes = frozenset(settings.auth_required_scopes)
        self._allowed_origins = frozenset(settings.cors_origins)

    def _credential(self, request: Request) -> tuple[str, bool]:
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                raise MissingToken("Send the user's JWT as 'Authorization: Bearer <token>'.")
            return token, False
        cookie_name = self._settings.auth_cookie_name
        cookie = request.cookies.get(cookie_name) if cookie_name else None
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
        try:
            claims = await self._verify(token)
        except TokenRejected as exc:
            log.info("identity_rejected", reason=exc.reason, jwt=fingerprint(token))
            metrics.IDENTITY_FAILURES.labels(exc.reason).inc()
            raise InvalidToken(exc.detail) from None
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
        return Principal(user_id=user_id, scopes=scopes, via_cookie=via_cookie)


def get_authenticator(request: Request) -> Authenticator:
    """The app's authenticator, built in its lifespan."""
    authenticator: Authenticator = request.app.state.authenticator
    return authenticator


async def authenticate(
    request: Request, authenticator: Annotated[Authenticator, Depends(get_authenticator)]
) -> Principal:
    """Dependency: the verified end user."""
    return await authenticator.authenticate(request)


CurrentUser = Annotated[Principal, Depends(authenticate)]
