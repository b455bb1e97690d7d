"""VideoDB's live capture plane, stood in for the sandbox: a session's streams, its WebSocket
(a real `websockets` server), the AI-step and export calls, and the webhooks.

Wraps the stand-in VideoDB (its tokens and sessions) and answers the live paths itself.
With `autoplay`, a session created with a callback plays a short recording by itself, as a
capture app would make VideoDB do: active (webhook), a few transcript and visual-index
events on its socket, then stopped and exported (webhooks). `make demo` shows that loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send
from websockets.asyncio.server import Server, ServerConnection, serve

from app.sandbox.stand_in_videodb import StandInVideoDB

STREAMS = [
    {"rtstream_id": "rts-mic-1", "channel_id": "mic", "name": "mic"},
    {"rtstream_id": "rts-screen-1", "channel_id": "screen", "name": "screen"},
]
SCRIPT = [  # what the autoplayed recording "says", one message a second
    {"channel": "transcript", "data": {"text": "Welcome to the demo.", "is_final": True,
                                       "start": 0.0, "end": 1.4}},
    {"channel": "scene_index", "data": {"text": "A slide titled 'Quarterly plan'.",
                                        "start": 0.0, "end": 5.0}},
    {"channel": "transcript", "data": {"text": "Every word arrives live.", "is_final": True,
                                       "start": 1.6, "end": 3.1}},
]  # fmt: skip


class StandInSocket:
    """VideoDB's capture WebSocket: a connection id first, then what `push` sends."""

    def __init__(self) -> None:
        self.connections: list[ServerConnection] = []
        self.opened = 0
        self.token = secrets.token_urlsafe(16)  # the URL is a credential, as VideoDB's is
        self._server: Server | None = None
        self.url = ""

    async def start(self) -> None:
        self._server = await serve(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/capture?token={self.token}"

    async def _handle(self, connection: ServerConnection) -> None:
        self.opened += 1
        self.connections.append(connection)
        await connection.send(json.dumps({"connection_id": f"conn-{self.opened}"}))
        try:
            await connection.wait_closed()
        finally:
            self.connections.remove(connection)

    async def push(self, message: str) -> None:
        """To every open connection, as VideoDB pushes an AI result."""
        for connection in list(self.connections):
            with contextlib.suppress(Exception):
                await connection.send(message)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class LivePlane:
    """The stand-in VideoDB with its live plane in front."""

    def __init__(
        self, videodb: StandInVideoDB, socket: StandInSocket, autoplay: bool = False
    ) -> None:
        self.videodb = videodb
        self.api_key = videodb.api_key
        self.sessions = videodb.sessions
        self.socket = socket
        self.autoplay = autoplay
        self.step_calls: list[tuple[str, dict[str, Any]]] = []
        self.step_fault: str | None = None  # "400": VideoDB refuses every AI step
        self.websocket_requests = 0
        self.export_calls: list[str] = []
        self._plays: set[asyncio.Task[None]] = set()

    def set_status(self, session_id: str, status: str, **extra: Any) -> None:
        """What VideoDB reports when the session is read again."""
        record = self.sessions[session_id]
        record["status"] = status
        record["rtstreams"] = STREAMS
        record.update(extra)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (
            path.startswith("/rtstream/") or path.endswith(("/websocket", "/export"))
        ):
            response = await self._live(Request(scope, receive))
            await response(scope, receive, send)
            return
        known = set(self.sessions)
        await self.videodb(scope, receive, send)
        if self.autoplay:
            for session_id in set(self.sessions) - known:
                task = asyncio.create_task(self._play(session_id))
                self._plays.add(task)
                task.add_done_callback(self._plays.discard)

    async def _live(self, request: Request) -> Response:
        if request.headers.get("x-access-token") != self.api_key:
            return JSONResponse({"success": False, "message": "Invalid API key"}, 401)
        path = request.url.path
        if path.endswith("/websocket") and request.method == "GET":
            self.websocket_requests += 1
            return JSONResponse({"success": True, "data": {"websocket_url": self.socket.url}})
        if path.startswith("/rtstream/") and request.method == "POST":
            body = json.loads(await request.body())
            self.step_calls.append((path, body))
            if self.step_fault:
                return JSONResponse({"success": False, "message": "refused"}, int(self.step_fault))
            started = {"rtstream_index_id": "idx-1", "status": "running", **body}
            return JSONResponse({"success": True, "data": started})
        if path.endswith("/export") and request.method == "POST":
            return self._export(path.split("/")[-2])
        return JSONResponse({"success": False, "message": "not found"}, 404)

    def _export(self, session_id: str) -> Response:
        self.export_calls.append(session_id)
        if session_id not in self.sessions:
            return JSONResponse({"success": False, "message": "not found"}, 404)
        exported = self.export_calls.count(session_id) > 1
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
            }
        return JSONResponse({"success": True, "data": data})

    async def webhook(self, session_id: str, event: str) -> None:
        """VideoDB posting to the session's callback_url (a failure is VideoDB's to retry)."""
        callback = self.sessions[session_id].get("callback_url")
        if not isinstance(callback, str):
            return
        body = {"event": event, "capture_session_id": session_id}
        with contextlib.suppress(httpx.HTTPError):
            async with httpx.AsyncClient(timeout=5) as client:
                await client.post(callback, json=body)

    async def _play(self, session_id: str) -> None:
        """A short recording: active, a few AI events, stopped, exported."""
        if not isinstance(self.sessions[session_id].get("callback_url"), str):
            return
        await asyncio.sleep(1.0)
        self.set_status(session_id, "active")
        await self.webhook(session_id, "capture_session.active")
        for _ in range(50):  # until the broker has its socket open
            if self.socket.connections:
                break
            await asyncio.sleep(0.1)
        for message in SCRIPT:
            await asyncio.sleep(1.0)
            await self.socket.push(json.dumps(message))
        await asyncio.sleep(1.0)
        self.set_status(session_id, "stopped")
        await self.webhook(session_id, "capture_session.stopped")
        await asyncio.sleep(1.0)
        self.set_status(session_id, "exported", exported_video_id="m-123")
        await self.webhook(session_id, "capture_session.exported")
