"""A stand-in for the VideoDB calls the broker makes, as VideoDB's OpenAPI describes them:
POST /capture/session/token, and creating and reading capture sessions.

The one stand-in of VideoDB: the sandbox (`token-broker demo`) serves it, and the tests and
the benchmarks drive it. It records what it received, and fails on demand in every way the
real one can (`StandInVideoDB`'s fields).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from app.videodb.client import UPSTREAM_TOKEN_PATH

UPSTREAM_DEFAULT_TTL = 86400


def token_answer(ttl: int) -> dict[str, Any]:
    """VideoDB's answer to a token request: a fresh st- token for `ttl` seconds."""
    token = {
        "token": f"st-{secrets.token_urlsafe(24)}",
        "expires_at": time.time() + ttl,  # a float, as VideoDB may send
        "expires_in": ttl,
    }
    return {"success": True, "data": token}


def _failure(status: int, message: str, code: str | None = None) -> Response:
    body: dict[str, Any] = {"success": False, "message": message}
    if code is not None:
        body["error_code"] = code
    return JSONResponse(body, status)


def _escaped_json(content: dict[str, Any]) -> Response:
    """JSON with everything past ASCII escaped, so that a lone surrogate can be sent (as
    `\\ud800`, which JSON's grammar allows and UTF-8 cannot carry)."""
    return Response(json.dumps(content), media_type="application/json")


def _parsed(raw: bytes) -> tuple[Any, bool]:
    """The request's JSON (an empty body is `{}`) and whether it was JSON at all."""
    try:
        return json.loads(raw or b"{}"), True
    except ValueError:
        return {"unparseable": raw.decode(errors="replace")}, False


@dataclass
class Call:
    """One token request VideoDB received."""

    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class StandInVideoDB:
    """VideoDB's token and capture-session calls, as an ASGI app.

    Whoever drives it sets how it behaves (None: all well). `fault`, the token call: "500",
    "502", "503" or "429" (with `retry_after` as its Retry-After), "401" (the key refused),
    "malformed" (HTML), "success_false" (a 200 saying it failed); each failure's message
    echoes the key, as a careless upstream's might, which no client may ever see.
    `session_fault`, the session calls: "400", "401", "403", "404", "500", "503", "hang",
    "malformed", "no_id", "id_named_id" (as some versions name it), "path_in_id".
    `session_overrides`: fields its session answers carry over what it stored (odd values:
    a lone surrogate...). `delay`: seconds before a token call is answered. `keep_calls`:
    False (the benchmarks) records no token call.
    """

    api_key: str
    fault: str | None = None
    delay: float = 0.0
    retry_after: str | None = None
    session_fault: str | None = None
    session_overrides: dict[str, Any] = field(default_factory=dict)
    keep_calls: bool = True
    calls: list[Call] = field(default_factory=list)
    session_calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)  # tests read from a thread

    def reset(self) -> None:
        """Back to a healthy VideoDB with no calls recorded."""
        with self._lock:
            self.fault, self.delay, self.retry_after = None, 0.0, None
            self.session_fault = None
            self.session_overrides.clear()
            self.calls.clear()
            self.session_calls.clear()
            self.sessions.clear()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # no lifespan of its own (a server takes the return for none)
        request = Request(scope, receive)
        if request.url.path.startswith("/collection/"):
            response = await self._session_call(request)
        elif request.url.path == UPSTREAM_TOKEN_PATH and request.method == "POST":
            response = await self._token_call(request)
        else:
            response = _failure(404, "not found")
        await response(scope, receive, send)

    async def _token_call(self, request: Request) -> Response:
        body, is_json = _parsed(await request.body())
        if self.keep_calls:
            with self._lock:
                self.calls.append(Call(dict(request.headers), body))
        if self.delay:
            await asyncio.sleep(self.delay)
        fault = self.fault
        echo = f"bad request for key {request.headers.get('x-access-token')}"
        if fault in ("500", "502", "503", "429"):
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return JSONResponse({"success": False, "message": echo}, int(fault), headers=headers)
        if fault == "401":
            return _failure(401, echo, "AUTH")
        if fault == "malformed":
            return PlainTextResponse("<html>" + echo, 200)
        if fault == "success_false":
            return _failure(200, echo)
        if request.headers.get("x-access-token") != self.api_key:
            return _failure(401, "Invalid API key", "UNAUTHORIZED")
        if not is_json:
            return _failure(400, "Invalid JSON body", "BAD_REQUEST")
        ttl = body.get("expires_in", UPSTREAM_DEFAULT_TTL) if isinstance(body, dict) else None
        if not isinstance(ttl, int) or ttl <= 0:
            return _failure(400, "expires_in must be a positive integer", "BAD_REQUEST")
        return JSONResponse(token_answer(ttl))

    async def _session_call(self, request: Request) -> Response:
        """POST /collection/{c}/capture/session and GET .../{session_id}, as specced."""
        parts = request.url.path.split("/")  # "", "collection", c, "capture", "session"[, id]
        body, _ = _parsed(await request.body())
        with self._lock:
            self.session_calls.append((request.method, request.url.path, body))
        refused = await self._session_refusal(request)
        if refused is not None:
            return refused
        if len(parts) == 5 and request.method == "POST":
            return self._create_session(parts[2], body)
        if len(parts) == 6 and request.method == "GET":
            found = self.sessions.get(parts[5])
            if found is None:
                return _failure(404, "Capture session not found", "NOT_FOUND")
            return _escaped_json({"success": True, "data": {**found, **self.session_overrides}})
        return _failure(404, "not found")

    async def _session_refusal(self, request: Request) -> Response | None:
        """What `session_fault` makes of a session call, or the refusal of a wrong key."""
        fault = self.session_fault
        echo = f"capture failed for key {request.headers.get('x-access-token')}"
        if fault == "hang":
            await asyncio.sleep(30)
        if fault in ("400", "401", "403", "404", "500", "503"):
            return _failure(int(fault), echo)
        if fault == "malformed":
            return PlainTextResponse("<html>" + echo, 200)
        if request.headers.get("x-access-token") != self.api_key:
            return _failure(401, "Invalid API key", "UNAUTHORIZED")
        return None

    def _create_session(self, collection_id: str, body: Any) -> Response:
        if not isinstance(body, dict) or not isinstance(body.get("end_user_id"), str):
            return _failure(400, "end_user_id is required", "BAD_REQUEST")
        session_id = "cap-" + secrets.token_hex(8)
        if self.session_fault == "path_in_id":
            session_id = "../../capture/session/token"
        asked = ("end_user_id", "callback_url", "ws_connection_id", "metadata")
        record = {
            "session_id": session_id,
            "collection_id": collection_id,
            "status": "created",
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "rtstreams": [{"rtstream_id": "rts-secret"}],  # what the broker never shows
            "channels": [{"channel_id": "mic", "type": "audio", "rtstream_id": "rts-1"}],
            **{k: body[k] for k in asked if k in body},
        }
        with self._lock:
            self.sessions[session_id] = record
        data = {**record, **self.session_overrides}
        if self.session_fault == "no_id":
            del data["session_id"]
        if self.session_fault == "id_named_id":
            data["id"] = data.pop("session_id")
        return _escaped_json({"success": True, "data": data})
