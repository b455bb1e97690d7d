"""The long-lived services the lifespan builds, and typed access to them from a request."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import HTTPConnection
from starlette.types import Scope

from app.capture.wiring import Capture
from app.config import Settings
from app.identity.authenticator import Authenticator
from app.identity.providers import IdentityProviders
from app.infra.rate_limits import UserRateLimiter
from app.infra.redis_state import SharedState
from app.tokens.service import TokenService
from app.videodb.circuit_breaker import CircuitBreaker

STATE_KEY = "services"


@dataclass(frozen=True, slots=True)
class Services:
    """Everything that lives as long as the app: built once by the lifespan, closed by it."""

    settings: Settings
    identity: IdentityProviders
    breaker: CircuitBreaker
    shared_state: SharedState | None
    authenticator: Authenticator
    limiter: UserRateLimiter
    tokens: TokenService
    capture: Capture | None = None  # BROKER_CAPTURE_SESSIONS=on only


def services_in(scope: Scope) -> Services:
    """The services of the app serving this request (the lifespan's state, ASGI's `state`)."""
    found = scope.get("state", {}).get(STATE_KEY)
    if not isinstance(found, Services):
        raise RuntimeError("the app's lifespan has not run: no services to serve with")
    return found


def services_of(connection: HTTPConnection) -> Services:
    """`services_in` for a Starlette request, as a FastAPI dependency."""
    return services_in(connection.scope)
