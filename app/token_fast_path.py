"""The token endpoint's POSTs, answered before FastAPI's routing and dependency machinery.

A cache hit is the broker's busiest path. FastAPI's per-request work (routing, the request
handler, dependency solving) cost as much as everything the broker itself does on a hit
(docs/performance.md), so this innermost layer calls `serve_token` directly. It sits inside
the request-context and CORS layers, so request ids, security headers, CORS, metrics and the
log line are exactly as for any other route; errors render through the same problem+json.
The FastAPI route stays declared for the OpenAPI document and answers 405 to other methods.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import BrokerError, problem_response
from app.routes_token import TOKEN_PATH, TokenEndpointServices, serve_token


class TokenFastPath:
    """Serve POST /v1/capture/session/token; pass every other request on."""

    def __init__(self, app: ASGIApp, *, route: BaseRoute | None = None) -> None:
        self.app = app
        self.route = route  # the declared route, so metrics label the request as routed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != TOKEN_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route
        services: TokenEndpointServices = scope["app"].state.token_endpoint
        try:
            response = await serve_token(Request(scope, receive), services)
        except BrokerError as exc:
            response = problem_response(exc.status, exc.code, exc.title, exc.detail, exc.headers)
        await response(scope, receive, send)
