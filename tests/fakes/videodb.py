"""A stand-in VideoDB that can fail in every way the real one can, and records what it got."""

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


@dataclass
class Call:
    """One request VideoDB received."""

    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeVideoDB:
    """Behaviour is set by the test: `fault` names what goes wrong (None: all well)."""

    api_key: str
    fault: str | None = None
    delay: float = 0.0
    retry_after: str | None = None
    # capture sessions fail on their own: None, "400", "401", "403", "404", "500", "503", "hang",
    # "malformed", "no_id", "id_named_id" (as some versions name it), "path_in_id"
    session_fault: str | None = None
    # fields its session answers carry over what it stored (odd values: a lone surrogate...)
    session_overrides: dict[str, Any] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    session_calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

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
        request = Request(scope, receive)
        response = await self._respond(request)
        await response(scope, receive, send)

    async def _respond(self, request: Request) -> Response:
        if request.url.path.startswith("/collection/"):
            return await self._capture_session(request)
        if request.url.path != "/capture/session/token" or request.method != "POST":
            return JSONResponse({"success": False, "message": "not found"}, 404)
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            body = {"unparseable": raw.decode(errors="replace")}
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
            return JSONResponse({"success": False, "message": echo, "error_code": "AUTH"}, 401)
        if fault == "malformed":
            return PlainTextResponse("<html>" + echo, 200)
        if fault == "success_false":
            return JSONResponse({"success": False, "message": echo}, 200)
        if request.headers.get("x-access-token") != self.api_key:
            return JSONResponse({"success": False, "message": "Invalid API key"}, 401)
        ttl = body.get("expires_in", 86400) if isinstance(body, dict) else 86400
        return JSONResponse(
            {
                "success": True,
                "data": {
                    "token": "st-" + secrets.token_urlsafe(24),
                    "expires_at": time.time() + ttl,
                    "expires_in": ttl,
                },
            }
        )

    async def _capture_session(self, request: Request) -> Response:
        """POST /collection/{c}/capture/session and GET .../{session_id}, as specced."""
        parts = request.url.path.split("/")  # "", "collection", c, "capture", "session"[, id]
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {"unparseable": raw.decode(errors="replace")}
        with self._lock:
            self.session_calls.append((request.method, request.url.path, body))
        fault = self.session_fault
        echo = f"capture failed for key {request.headers.get('x-access-token')}"
        if fault == "hang":
            await asyncio.sleep(30)
        if fault in ("500", "503"):
            return JSONResponse({"success": False, "message": echo}, int(fault))
        if fault in ("400", "401", "403", "404"):
            return JSONResponse({"success": False, "message": echo}, int(fault))
        if fault == "malformed":
            return PlainTextResponse("<html>" + echo, 200)
        if request.headers.get("x-access-token") != self.api_key:
            return JSONResponse({"success": False, "message": "Invalid API key"}, 401)
        if len(parts) == 5 and request.method == "POST":
            if not isinstance(body, dict) or not isinstance(body.get("end_user_id"), str):
                return JSONResponse({"success": False, "message": "end_user_id required"}, 400)
            session_id = "cap-" + secrets.token_hex(8)
            if fault == "path_in_id":
                session_id = "../../capture/session/token"
            record = {
                "session_id": session_id,
                "collection_id": parts[2],
                "status": "created",
                "created_at": "2026-11-30T12:00:00Z",
                "rtstreams": [{"rtstream_id": "rts-secret"}],
                "channels": [{"channel_id": "mic", "type": "audio", "rtstream_id": "rts-1"}],
                **body,
            }
            with self._lock:
                self.sessions[session_id] = record
            data = {**record, **self.session_overrides}
            if fault == "no_id":
                del data["session_id"]
            if fault == "id_named_id":
                data["id"] = data.pop("session_id")
            return _escaped_json({"success": True, "data": data})
        if len(parts) == 6 and request.method == "GET":
            found = self.sessions.get(parts[5])
            if found is None:
                return JSONResponse({"success": False, "message": "Session not found"}, 404)
            return _escaped_json({"success": True, "data": {**found, **self.session_overrides}})
        return JSONResponse({"success": False, "message": "not found"}, 404)


def _escaped_json(content: dict[str, Any]) -> Response:
    """JSON with everything past ASCII escaped, so that a lone surrogate can be sent (as
    `\\ud800`, which JSON's grammar allows and UTF-8 cannot carry)."""
    return Response(json.dumps(content), media_type="application/json")
