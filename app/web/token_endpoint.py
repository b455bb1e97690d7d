"""POST /v1/capture/session/token: the one thing end users call."""

from __future__ import annotations

import json
import time
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import BrokerError, InvalidRequest
from app.observability.fingerprints import fingerprint
from app.services import Services, services_in, services_of
from app.settings import Settings
from app.web.problems import NO_STORE, documented_problems, problem_for
from app.web.request_body import read_body
from app.web.request_context import AUDIT_SCOPE_KEY

MAX_BODY_BYTES = 1024
TOKEN_PATH = "/v1/capture/session/token"  # noqa: S105 - a path

MAX_USER_AGENT_CHARS = 256

router = APIRouter(tags=["tokens"])


class TokenResponse(BaseModel):
    """A short-lived VideoDB session token."""

    token: str = Field(description="the st- session token")
    expires_at: int = Field(description="epoch seconds when the token stops working")
    expires_in: int = Field(description="seconds left at the time of the response")


def requested_ttl(body: bytes, settings: Settings) -> int:
    """The lifetime asked for: none, {} or {"expires_in": int}; anything else is a 422."""
    # What nearly every client sends, no parse needed. A body of whitespace alone is neither
    # none nor JSON, so it goes on to the parser and is refused.
    if not body or body.strip() == b"{}":
        return settings.token_default_ttl
    try:
        document: Any = json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidRequest('The body must be JSON: {} or {"expires_in": <int>}.') from None
    if not isinstance(document, dict):
        raise InvalidRequest('The body must be a JSON object: {} or {"expires_in": <int>}.')
    unknown = sorted(set(document) - {"expires_in"})
    if unknown:
        raise InvalidRequest(
            "Only 'expires_in' may be sent; the user id comes from the verified token."
        )
    return requested_lifetime(document, settings)


def requested_lifetime(document: dict[str, Any], settings: Settings) -> int:
    """`expires_in` of a request body: the default when absent, else an integer in range."""
    low, high = settings.token_min_ttl, settings.token_max_ttl
    if "expires_in" not in document:
        return settings.token_default_ttl
    ttl = document["expires_in"]
    if isinstance(ttl, float) and ttl.is_integer():
        ttl = int(ttl)  # JSON Schema counts 600.0 as an integer, so do we
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not low <= ttl <= high:
        raise InvalidRequest(f"expires_in must be an integer from {low} to {high} seconds.")
    return ttl


@router.post(
    TOKEN_PATH,
    response_model=TokenResponse,
    summary="Mint a short-lived VideoDB session token for the authenticated user",
    openapi_extra={"requestBody": {"required": False, "content": {"application/json": {}}}},
    responses=documented_problems(401, 403, 413, 422, 429, 502, 503, 504),
)
async def create_session_token(request: Request) -> Response:
    """Authenticate the end user, then return a session token bound to them."""
    return await serve_token(request, services_of(request))


# What metrics and the log line name a token request by (FastAPI's routes put themselves in
# the scope; the fast path below answers before routing, so it puts this one there).
token_route = Route(TOKEN_PATH, create_session_token, methods=["POST"])


class TokenFastPath:
    """Answers the token endpoint's POSTs before FastAPI's routing; passes on the rest.

    A cache hit is the busiest path, and FastAPI's per-request work for a route (routing,
    the request/response wrapper, dependency solving) cost as much as the broker's own work
    on a hit: this layer, the innermost, calls `serve_token` directly (a plain Starlette
    route placed first was measured too and kept most of that cost: docs/performance.md).
    It sits inside the request-context and CORS layers, so request ids, security headers,
    CORS, metrics and the log line are as for any route; errors render as problem+json.
    The FastAPI route above stays for the OpenAPI document and the 405 on other methods.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != TOKEN_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        scope["route"] = token_route
        try:
            response = await serve_token(Request(scope, receive), services_in(scope))
        except BrokerError as exc:
            response = problem_for(exc)
        await response(scope, receive, send)


async def serve_token(request: Request, services: Services) -> Response:
    """The endpoint itself: identity, body, limits, then a reused or freshly minted token."""
    user = await services.authenticator.authenticate(request)
    ttl = requested_ttl(await read_body(request, MAX_BODY_BYTES), services.settings)
    await services.limiter.check(user.user_id)
    issued = await services.tokens.issue(user.user_id, ttl)
    expires_at = issued.minted.expires_at
    expires_in = max(0, expires_at - int(time.time()))
    # The audit fields ride on the request's one log line (request_context.py), written
    # once the response is sent: one line per issued token, not two (docs/performance.md).
    request.scope[AUDIT_SCOPE_KEY] = {
        "user_id": user.user_id,
        "provider": user.provider,
        "requested_ttl": ttl,
        "granted_ttl": expires_in,
        "source": issued.source,
        "client_ip": request.client.host if request.client else None,
        "user_agent": request.headers.get("user-agent", "")[:MAX_USER_AGENT_CHARS],
        "token": fingerprint(issued.minted.token),
    }
    body = orjson.dumps(
        {"token": issued.minted.token, "expires_at": expires_at, "expires_in": expires_in}
    )
    return Response(body, media_type="application/json", headers=NO_STORE)


def document_token_endpoint(app: FastAPI, settings: Settings) -> None:
    """Publish this deployment's body schema (its lifetime range) and credentials (a bearer
    JWT, and the cookie when one is configured) in the OpenAPI document, so that a client
    generated from it sends what the endpoint needs."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = original()
            operation = schema["paths"][TOKEN_PATH]["post"]
            body = operation["requestBody"]["content"]
            body["application/json"]["schema"] = {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "expires_in": {
                        "type": "integer",
                        "minimum": settings.token_min_ttl,
                        "maximum": settings.token_max_ttl,
                        "description": "requested lifetime in seconds "
                        f"(default {settings.token_default_ttl})",
                    }
                },
            }
            schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
            schemes["userJWT"] = {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "the end user's JWT from the partner's identity provider",
            }
            operation["security"] = [{"userJWT": []}]
            if settings.auth_cookie_name:
                schemes["userJWTCookie"] = {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": settings.auth_cookie_name,
                    "description": "the same JWT in a cookie; the request must then also "
                    "carry the header 'X-CSRF: 1'",
                }
                operation["security"].append({"userJWTCookie": []})
        return app.openapi_schema or original()

    app.openapi = openapi  # type: ignore[method-assign]
