"""The broker's errors: one base class carrying status, code and title, a subclass for each
failure a client can see. Rendering them (problem+json) is the web layer's business
(app/web/problems.py); nothing here imports it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar


class BrokerError(Exception):
    """A failure the client should see; subclasses fix status, code and title."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers: dict[str, str] = dict(headers or {})


def _bearer_challenge(error: str, description: str, scope: str | None = None) -> str:
    parts = ['Bearer realm="videodb-token-broker"', f'error="{error}"']
    parts.append(f'error_description="{description}"')
    if scope:
        parts.append(f'scope="{scope}"')
    return ", ".join(parts)


class MissingToken(BrokerError):
    status = 401
    code = "missing_token"
    title = "Missing credentials"

    def __init__(self, detail: str) -> None:
        # RFC 6750 section 3.1: no error code when the request carried no credentials.
        super().__init__(
            detail, headers={"WWW-Authenticate": 'Bearer realm="videodb-token-broker"'}
        )


class InvalidToken(BrokerError):
    status = 401
    code = "invalid_token"
    title = "Invalid credentials"

    def __init__(self, detail: str) -> None:
        super().__init__(
            detail, headers={"WWW-Authenticate": _bearer_challenge("invalid_token", detail)}
        )


class InsufficientScope(BrokerError):
    status = 403
    code = "insufficient_scope"
    title = "Insufficient scope"

    def __init__(self, detail: str, scope: str) -> None:
        challenge = _bearer_challenge("insufficient_scope", detail, scope)
        super().__init__(detail, headers={"WWW-Authenticate": challenge})


class CsrfFailed(BrokerError):
    status = 403
    code = "csrf_failed"
    title = "CSRF check failed"


class OriginNotAllowed(BrokerError):
    status = 403
    code = "origin_not_allowed"
    title = "Origin not allowed"


class NotFound(BrokerError):
    status = 404
    code = "not_found"
    title = "Not found"


class InvalidRequest(BrokerError):
    status = 422
    code = "invalid_request"
    title = "Invalid request"


class PayloadTooLarge(BrokerError):
    status = 413
    code = "payload_too_large"
    title = "Request body too large"


class RateLimited(BrokerError):
    status = 429
    code = "rate_limited"
    title = "Too many requests"


class UpstreamError(BrokerError):
    status = 502
    code = "upstream_error"
    title = "VideoDB answered unusably"


class UpstreamKeyRefused(UpstreamError):
    """VideoDB refused the broker's own credentials (401/403): an operator's problem, and on
    the token call, the proof that the key is revoked or wrong."""


class UpstreamRefused(UpstreamError):
    """VideoDB refused what was asked (another 4xx): about the request, not the key."""


class UpstreamUnusable(UpstreamError):
    """VideoDB answered, but with something we cannot use: a malfunction, which the circuit
    breaker counts (a refusal, 4xx, is VideoDB deciding and does not count)."""


class UpstreamUnavailable(BrokerError):
    status = 503
    code = "upstream_unavailable"
    title = "VideoDB unavailable"

    def __init__(
        self,
        detail: str,
        retry_after: int,
        upstream_hint: int | None = None,
        *,
        reached: bool = True,
    ) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, retry_after))})
        self.retry_after = max(1, retry_after)
        self.upstream_hint = upstream_hint  # VideoDB's own Retry-After, when it sent one
        self.reached = reached  # False: the request never left, so any call may be repeated


class UpstreamTimeout(BrokerError):
    status = 504
    code = "upstream_timeout"
    title = "VideoDB timed out"

    def __init__(self, detail: str, *, reached: bool = True) -> None:
        super().__init__(detail)
        self.reached = reached  # False: the request never left, so any call may be repeated
