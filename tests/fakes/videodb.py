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
    calls: list[Call] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        """Back to a healthy VideoDB with no calls recorded."""
        with self._lock:
            self.fault, self.delay, self.retry_after = None, 0.0, None
            self.calls.clear()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        response = await self._respond(request)
        await response(scope, receive, send)

    async def _respond(self, request: Request) -> Response:
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
