"""A stand-in for VideoDB's POST /capture/session/token, as its OpenAPI describes it."""

from __future__ import annotations

import json
import secrets
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

UPSTREAM_DEFAULT_TTL = 86400


def _failure(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse({"success": False, "message": message, "error_code": code}, status)


def stand_in_videodb(api_key: str) -> Starlette:
    """Mint st- tokens for requests carrying `api_key`, as VideoDB would."""

    async def create_token(request: Request) -> JSONResponse:
        if request.headers.get("x-access-token") != api_key:
            return _failure(401, "Invalid API key", "UNAUTHORIZED")
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return _failure(400, "Invalid JSON body", "BAD_REQUEST")
        ttl = body.get("expires_in", UPSTREAM_DEFAULT_TTL) if isinstance(body, dict) else None
        if not isinstance(ttl, int) or ttl <= 0:
            return _failure(400, "expires_in must be a positive integer", "BAD_REQUEST")
        now = time.time()
        return JSONResponse(
            {
                "success": True,
                "data": {
                    "token": f"st-{secrets.token_urlsafe(24)}",
                    "expires_at": now + ttl,  # a float, as VideoDB may send
                    "expires_in": ttl,
                },
            }
        )

    return Starlette(routes=[Route("/capture/session/token", create_token, methods=["POST"])])
