"""A stand-in for VideoDB's calls the broker makes, as VideoDB's OpenAPI describes them:
POST /capture/session/token, and creating and reading capture sessions."""

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


async def _keyed_json(request: Request, api_key: str) -> object | JSONResponse:
    """The JSON body of a request carrying the key, or VideoDB's refusal."""
    if request.headers.get("x-access-token") != api_key:
        return _failure(401, "Invalid API key", "UNAUTHORIZED")
    try:
        body: object = json.loads(await request.body() or b"{}")
    except ValueError:
        return _failure(400, "Invalid JSON body", "BAD_REQUEST")
    return body


def stand_in_videodb(
    api_key: str, sessions: dict[str, dict[str, object]] | None = None
) -> Starlette:
    """Mint st- tokens for requests carrying `api_key`, as VideoDB would; sessions are kept
    in `sessions` (its live plane plays them)."""

    async def create_token(request: Request) -> JSONResponse:
        body = await _keyed_json(request, api_key)
        if isinstance(body, JSONResponse):
            return body
        ttl = body.get("expires_in", UPSTREAM_DEFAULT_TTL) if isinstance(body, dict) else None
        if not isinstance(ttl, int) or ttl <= 0:
            return _failure(400, "expires_in must be a positive integer", "BAD_REQUEST")
        token = {
            "token": f"st-{secrets.token_urlsafe(24)}",
            "expires_at": time.time() + ttl,  # a float, as VideoDB may send
            "expires_in": ttl,
        }
        return JSONResponse({"success": True, "data": token})

    sessions = {} if sessions is None else sessions

    async def create_session(request: Request) -> JSONResponse:
        body = await _keyed_json(request, api_key)
        if isinstance(body, JSONResponse):
            return body
        if not isinstance(body, dict) or not isinstance(body.get("end_user_id"), str):
            return _failure(400, "end_user_id is required", "BAD_REQUEST")
        session_id = f"cap-{secrets.token_hex(8)}"
        record: dict[str, object] = {
            **{
                k: body[k] for k in ("end_user_id", "callback_url", "ws_connection_id") if k in body
            },
            "metadata": body.get("metadata") or {},
            "session_id": session_id,
            "collection_id": request.path_params["collection_id"],
            "status": "created",
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        sessions[session_id] = record
        return JSONResponse({"success": True, "data": record})

    async def get_session(request: Request) -> JSONResponse:
        if request.headers.get("x-access-token") != api_key:
            return _failure(401, "Invalid API key", "UNAUTHORIZED")
        found = sessions.get(request.path_params["session_id"])
        if found is None:
            return _failure(404, "Capture session not found", "NOT_FOUND")
        return JSONResponse({"success": True, "data": found})

    path = "/collection/{collection_id}/capture/session"
    return Starlette(
        routes=[
            Route("/capture/session/token", create_token, methods=["POST"]),
            Route(path, create_session, methods=["POST"]),
            Route(path + "/{session_id}", get_session, methods=["GET"]),
        ]
    )
