"""POST /v1/capture/session/token: the one thing end users call."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import FastAPI, Request, Security
from fastapi.responses import Response
from fastapi.routing import APIRoute
from fastapi.security import APIKeyCookie, HTTPBearer
from pydantic import BaseModel, Field
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send

from app.config import Settings
from app.errors import InvalidRequest
from app.observability.fingerprints import fingerprint
from app.services import Services, services_in, services_of
from app.tokens.lifetime import requested_lifetime
from app.web.problems import NO_STORE, documented_problems
from app.web.request_body import read_body
from app.web.request_context import AUDIT_SCOPE_KEY, first_header

MAX_BODY_BYTES = 1024
TOKEN_PATH = "/v1/capture/session/token"  # noqa: S105 - a path

MAX_USER_AGENT_CHARS = 256

BEARER = HTTPBearer(
    scheme_name="userJWT",
    bearerFormat="JWT",
    description="the end user's JWT from the partner's identity provider",
    auto_error=False,
)


def cookie_scheme(name: str) -> APIKeyCookie:
    """The same JWT in a cookie, as this deployment names it."""
    return APIKeyCookie(
        name=name,
        scheme_name="userJWTCookie",
        description="the same JWT in a cookie; the request must then also carry the header "
        "'X-CSRF: 1'",
        auto_error=False,
    )


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


# The answer's headers but its length, encoded once: it carries a token, so nothing may keep
# it (NO_STORE), and it is JSON. The order is the one Starlette's Response gives them.
_NO_STORE_RAW = tuple(
    (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in NO_STORE.items()
)
_JSON_TYPE = (b"content-type", b"application/json")


def answer_headers(length: int) -> list[tuple[bytes, bytes]]:
    """The raw headers of a token answer of `length` bytes: a new list, as the layers outside
    append theirs to it (request id, security headers)."""
    return [*_NO_STORE_RAW, (b"content-length", str(length).encode("latin-1")), _JSON_TYPE]


async def serve(scope: Scope, receive: Receive, send: Send) -> None:
    """The token endpoint as an ASGI app: the route's, once it matched."""
    body = await token_answer(Request(scope, receive), services_in(scope))
    await send({"type": "http.response.start", "status": 200, "headers": answer_headers(len(body))})
    await send({"type": "http.response.body", "body": body})


class TokenRoute(APIRoute):
    """The token endpoint's route. FastAPI documents it as any APIRoute (response model,
    responses, `openapi_extra`, security schemes); it is served by `serve`, a plain ASGI
    callable: no parameter machinery (dependency solving, body parsing, response validation),
    no per-route exception wrapper and no Response object, the larger part of a cache hit
    served through them (docs/performance.md). What `serve` raises goes to the app's error
    handlers, as from any route."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        self.app = serve

    # Starlette's matching and method check: APIRoute's wrap them in a look-up of the copy an
    # included router made of a route, and this route is the app's own, never included.
    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = Route.matches(self, scope)
        if match is not Match.NONE:
            child_scope["route"] = self  # as APIRoute's: FastAPI's router takes it from here
        return match, child_scope

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await Route.handle(self, scope, receive, send)


def add_token_route(app: FastAPI, settings: Settings) -> None:
    """The token endpoint, documented for this deployment (its lifetime range; a bearer JWT,
    and the cookie when one is configured), on the app's own router: an included router's
    routes are looked up through it on every request."""
    body_schema = {
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
    # Declared for the document only: TokenRoute runs no dependency. Authentication
    # is the Authenticator's (the cookie needs its CSRF header, which these classes ignore).
    credentials = [Security(BEARER)]
    if settings.auth_cookie_name:
        credentials.append(Security(cookie_scheme(settings.auth_cookie_name)))
    app.router.add_api_route(
        TOKEN_PATH,
        create_session_token,
        methods=["POST"],
        response_model=TokenResponse,
        summary="Mint a short-lived VideoDB session token for the authenticated user",
        dependencies=credentials,
        openapi_extra={
            "requestBody": {
                "required": False,
                "content": {"application/json": {"schema": body_schema}},
            }
        },
        responses=documented_problems(401, 403, 413, 422, 429, 502, 503, 504),
        tags=["tokens"],
        route_class_override=TokenRoute,
    )
    # Matched first: the busiest path, ahead of the /openapi.json FastAPI added on creation.
    app.router.routes.insert(0, app.router.routes.pop())


async def create_session_token(request: Request) -> Response:
    """Authenticate the end user, then return a session token bound to them."""
    # What FastAPI documents the route by (its name, this docstring); TokenRoute serves the
    # route with `serve`. Kept callable, as a FastAPI endpoint, for bench/fast_path_ab.py.
    body = await token_answer(request, services_of(request))
    return Response(body, media_type="application/json", headers=NO_STORE)


async def token_answer(request: Request, services: Services) -> bytes:
    """The endpoint itself: identity, body, limits, then a reused or freshly minted token;
    the answer's JSON body."""
    user = await services.authenticator.authenticate(request)
    ttl = requested_ttl(await read_body(request, MAX_BODY_BYTES), services.settings)
    await services.limiter.check(user.user_id)
    issued = await services.tokens.issue(user.user_id, ttl)
    expires_at = issued.minted.expires_at
    expires_in = max(0, expires_at - int(time.time()))
    client = request.scope.get("client")  # what request.client holds, without the Address
    # The audit fields ride on the request's one log line (request_context.py), written
    # once the response is sent: one line per issued token, not two (docs/performance.md).
    request.scope[AUDIT_SCOPE_KEY] = {
        "user_id": user.user_id,
        "provider": user.provider,
        "requested_ttl": ttl,
        "granted_ttl": expires_in,
        "source": issued.source,
        "client_ip": client[0] if client else None,
        "user_agent": (first_header(request.scope, b"user-agent") or "")[:MAX_USER_AGENT_CHARS],
        "token": fingerprint(issued.minted.token),
    }
    return orjson.dumps(
        {"token": issued.minted.token, "expires_at": expires_at, "expires_in": expires_in}
    )
