"""VideoDB's live capture plane, stood in for: the session's streams and status, the
WebSocket (a real `websockets` server), the AI-step and export calls, and the webhooks.

Wraps the stand-in VideoDB (its tokens and sessions) and answers the live paths itself.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send
from websockets.asyncio.server import Server, ServerConnection, serve

from tests.fakes.videodb import FakeVideoDB

STREAMS = [
    {"rtstream_id": "rts-mic-1", "channel_id": "MIC", "name": "mic"},
    {"rtstream_id": "rts-screen-1", "channel_id": "displays", "name": "screen"},
]


class FakeVideoDBSocket:
    """A WebSocket server in its own thread: each connection is told its connection id
    first; `send` pushes a message to every open connection."""

    def __init__(self) -> None:
        self.connections: list[ServerConnection] = []
        self.opened = 0
        self.secret = secrets.token_urlsafe(16)  # the URL is a credential: it must not leak
        self._loop = asyncio.new_event_loop()
        self._server: Server | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        self.url: str = f"ws://127.0.0.1:{port}/capture?token={self.secret}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._server = await serve(self._handle, "127.0.0.1", 0)
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    async def _handle(self, connection: ServerConnection) -> None:
        self.opened += 1
        self.connections.append(connection)
        await connection.send(json.dumps({"connection_id": f"conn-{self.opened}"}))
        try:
            await connection.wait_closed()
        finally:
            self.connections.remove(connection)

    def send(self, message: str) -> None:
        """To every open connection, as VideoDB pushes an AI result."""

        async def push() -> None:
            for connection in list(self.connections):
                await connection.send(message)

        asyncio.run_coroutine_threadsafe(push(), self._loop).result(10)

    @property
    def open(self) -> int:
        return len(self.connections)

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@dataclass
class FakeLiveVideoDB:
    """The stand-in VideoDB with its live plane."""

    base: FakeVideoDB
    socket: FakeVideoDBSocket
    step_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    step_fault: str | None = None  # "400": VideoDB refuses every AI step
    websocket_requests: int = 0
    export_calls: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def set_status(self, session_id: str, status: str, **extra: Any) -> None:
        """What VideoDB reports when the session is read again."""
        with self.base._lock:
            record = self.base.sessions[session_id]
            record["status"] = status
            record["rtstreams"] = STREAMS
            record.update(extra)

    def webhook(self, session_id: str, event: str = "capture_session.active") -> httpx.Response:
        """VideoDB posting to the callback_url the session was created with."""
        record = self.base.sessions[session_id]
        body = {"event": event, "capture_session_id": session_id, "status": "ignored"}
        return httpx.post(record["callback_url"], json=body, timeout=10)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (
            path.startswith("/rtstream/") or path.endswith(("/websocket", "/export"))
        ):
            response = await self._live(Request(scope, receive))
            await response(scope, receive, send)
            return
        await self.base(scope, receive, send)

    async def _live(self, request: Request) -> Response:
        if request.headers.get("x-access-token") != self.base.api_key:
            return JSONResponse({"success": False, "message": "Invalid API key"}, 401)
        path = request.url.path
        if path.endswith("/websocket") and request.method == "GET":
            with self._lock:
                self.websocket_requests += 1
            return JSONResponse({"success": True, "data": {"websocket_url": self.socket.url}})
        if path.startswith("/rtstream/") and request.method == "POST":
            body = json.loads(await request.body())
            with self._lock:
                self.step_calls.append((path, body))
            if self.step_fault:
                return JSONResponse({"success": False, "message": "refused"}, int(self.step_fault))
            started = {"rtstream_index_id": "idx-1", "status": "running", **body}
            return JSONResponse({"success": True, "data": started})
        if path.endswith("/export") and request.method == "POST":
            session_id = path.split("/")[-2]
            with self._lock:
                self.export_calls.append(session_id)
            if session_id not in self.base.sessions:
                return JSONResponse({"success": False, "message": "not found"}, 404)
            exported = len([c for c in self.export_calls if c == session_id]) > 1
            data: dict[str, Any] = {
                "session_id": session_id,
                "video_channel_id": "ch-1",
                "export_status": "exported" if exported else "exporting",
            }
            if exported:
                data |= {
                    "video_id": "m-123",
                    "stream_url": "https://stream.videodb.io/m-123.m3u8",
                    "player_url": "https://console.videodb.io/player?m-123",
                    "internal_id": "never-passed-on",
                }
            return JSONResponse({"success": True, "data": data})
        return JSONResponse({"success": False, "message": "not found"}, 404)


@contextmanager
def live_plane(base: FakeVideoDB) -> Iterator[FakeLiveVideoDB]:
    """The live plane around `base`, its WebSocket server stopped at the end."""
    socket = FakeVideoDBSocket()
    try:
        yield FakeLiveVideoDB(base, socket)
    finally:
        socket.stop()
