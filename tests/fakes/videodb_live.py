"""The sandbox's live plane (app/sandbox/live_plane.py) around the stand-in VideoDB, with its
WebSocket server on an event loop of its own thread, so that tests can push messages and
count connections from outside."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from app.sandbox.live_plane import LivePlane, StandInSocket
from app.sandbox.stand_in_videodb import StandInVideoDB


class ThreadedSocket:
    """A StandInSocket served from its own thread."""

    def __init__(self) -> None:
        self.inner = StandInSocket()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.inner.start(), self._loop).result(10)

    @property
    def secret(self) -> str:
        return self.inner.token

    @property
    def open(self) -> int:
        return len(self.inner.connections)

    @property
    def opened(self) -> int:
        return self.inner.opened

    def send(self, message: str) -> None:
        asyncio.run_coroutine_threadsafe(self.inner.push(message), self._loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.inner.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


class FakeLiveVideoDB(LivePlane):
    """The live plane over the stand-in, driven from the test's thread."""

    def __init__(self, base: StandInVideoDB, socket: ThreadedSocket) -> None:
        super().__init__(base, socket.inner)
        self.base = base
        self.threaded_socket = socket

    def webhook_now(self, session_id: str, event: str = "capture_session.active") -> httpx.Response:
        """VideoDB posting to the callback_url the session was created with."""
        record = self.base.sessions[session_id]
        body = {"event": event, "capture_session_id": session_id, "status": "ignored"}
        return httpx.post(record["callback_url"], json=body, timeout=10)


@contextmanager
def live_plane(base: StandInVideoDB) -> Iterator[FakeLiveVideoDB]:
    """The live plane around `base`, its WebSocket server stopped at the end."""
    socket = ThreadedSocket()
    try:
        yield FakeLiveVideoDB(base, socket)
    finally:
        socket.stop()
