"""One VideoDB WebSocket: opened, its connection id read, its messages handed on.

The URL VideoDB hands out is itself a credential: it is never logged, traced or returned
(a fingerprint at most). VideoDB's protocol has no way to resume a socket: the AI steps
were started with this socket's connection id, and a new socket has another, so a dropped
socket is not reconnected; its session's feed simply gets no more AI events (logged and
counted). No header of ours is added to the handshake (no trace context).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from app.capture.live.events import MAX_MESSAGE_BYTES
from app.observability.fingerprints import fingerprint

OPEN_TIMEOUT_S = 5.0
FIRST_MESSAGE_TIMEOUT_S = 10.0
MAX_CONNECTION_ID_CHARS = 256

log = structlog.get_logger(logger_name=__name__)


class SocketFailed(Exception):
    """The socket could not be opened, or did not say its connection id."""


class VideoDBSocket:
    """An open VideoDB WebSocket and its connection id."""

    def __init__(self, connection: ClientConnection, connection_id: str) -> None:
        self._connection = connection
        self.connection_id = connection_id

    @classmethod
    async def open(cls, url: str) -> VideoDBSocket:
        """Connect and read the first message, `{"connection_id": …}`."""
        try:
            connection = await connect(
                url,
                open_timeout=OPEN_TIMEOUT_S,
                max_size=MAX_MESSAGE_BYTES,
                ping_interval=20,
                ping_timeout=20,
                user_agent_header=None,
                proxy=None,
            )
        except (OSError, TimeoutError, WebSocketException) as exc:
            log.warning(
                "videodb_socket_refused", error_type=type(exc).__name__, url=fingerprint(url)
            )
            raise SocketFailed("VideoDB's WebSocket could not be opened.") from None
        try:
            async with asyncio.timeout(FIRST_MESSAGE_TIMEOUT_S):
                first = await connection.recv()
            connection_id = json.loads(first).get("connection_id")
        except (TimeoutError, WebSocketException, ValueError, AttributeError) as exc:
            await connection.close()
            log.warning("videodb_socket_unusable", error_type=type(exc).__name__)
            raise SocketFailed("VideoDB's WebSocket did not name its connection.") from None
        if (
            not isinstance(connection_id, str)
            or not connection_id.isprintable()
            or not 0 < len(connection_id) <= MAX_CONNECTION_ID_CHARS
        ):
            await connection.close()
            raise SocketFailed("VideoDB's WebSocket named no usable connection.")
        return cls(connection, connection_id)

    async def messages(self) -> AsyncIterator[str | bytes]:
        """Every message until the socket closes (normally or not)."""
        try:
            async for message in self._connection:
                yield message
        except WebSocketException as exc:
            log.warning("videodb_socket_dropped", error_type=type(exc).__name__)

    async def close(self) -> None:
        await self._connection.close()
