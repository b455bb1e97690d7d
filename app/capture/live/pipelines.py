"""What a webhook sets off, believing only what VideoDB says when asked again.

`active`: once per session across replicas (a claim), one VideoDB WebSocket, then each
configured step on the session's first stream of its channel with that socket's connection
id; what the socket says is relayed, reduced, into the session's event log until a final
status arrives there (from any replica), then after a short grace the socket is closed.
`stopped`, `failed`, `exported`: once each, a `status` event for the owner.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import structlog

from app.capture.live import cancel_all
from app.capture.live.claims import Claims
from app.capture.live.event_log import EventLog
from app.capture.live.events import FINAL_STATUSES, ai_event, status_event
from app.capture.live.videodb_socket import SocketFailed, VideoDBSocket
from app.config.live import PipelineStep
from app.errors import BrokerError, NotFound
from app.observability import metrics, tracing

CLAIM_TTL_S = 24 * 3600
CLOSE_GRACE_S = 5.0  # trailing events after a final status
MAX_SOCKET_LIFETIME_S = 12 * 3600
FINAL_POLL_S = 15.0
# VideoDB's channel_id spellings, by the contract's channel (its README writes plurals)
CHANNEL_NAMES = {
    "mic": ("mic", "mics"),
    "screen": ("screen", "screens", "display", "displays"),
    "system_audio": ("system_audio", "system_audios"),
}

log = structlog.get_logger(logger_name=__name__)


class LiveVideoDB(Protocol):
    """The calls live capture makes with the key."""

    async def get_capture_session(self, session_id: str) -> dict[str, object]: ...

    async def websocket_url(self) -> str: ...

    async def start_step(self, path: str, payload: dict[str, object]) -> dict[str, object]: ...


def first_stream(record: dict[str, object], channel: str) -> str | None:
    """The id of the session's first real-time stream of this channel, if any."""
    streams = record.get("rtstreams")
    names = CHANNEL_NAMES[channel]
    for stream in streams if isinstance(streams, list) else []:
        if not isinstance(stream, dict):
            continue
        channel_id = stream.get("channel_id")
        stream_id = stream.get("rtstream_id", stream.get("id"))
        if (
            isinstance(channel_id, str)
            and channel_id.lower() in names
            and isinstance(stream_id, str)
            and stream_id.isascii()
            and stream_id.replace("-", "").replace("_", "").isalnum()
        ):
            return stream_id
    return None


def step_call(step: PipelineStep, stream_id: str, connection_id: str) -> tuple[str, dict[str, Any]]:
    """VideoDB's path and body that start this step on this stream."""
    if step.run == "transcript":
        return f"/rtstream/{stream_id}/transcription", {
            "action": "start",
            "ws_connection_id": connection_id,
        }
    batch = step.batch.model_dump() if step.batch is not None else None
    body: dict[str, Any] = {
        "extraction_type": "transcript" if step.run == "audio_index" else "time",
        "extraction_config": batch,
        "prompt": step.prompt,
        "model_name": step.model_name,
        "model_config": {},
        "name": step.name,
        "ws_connection_id": connection_id,
    }
    return f"/rtstream/{stream_id}/index/scene", {k: v for k, v in body.items() if v is not None}


class LivePipelines:
    """The webhooks' work: pipelines once per session, status events once per status."""

    def __init__(
        self, videodb: LiveVideoDB, events: EventLog, claims: Claims, steps: list[PipelineStep]
    ) -> None:
        self._videodb = videodb
        self._events = events
        self._claims = claims
        self._steps = steps
        self._relays: dict[str, asyncio.Task[None]] = {}

    @property
    def open_sockets(self) -> int:
        return len(self._relays)

    async def on_webhook(self, session_id: str) -> None:
        """Read the session again and act on the status VideoDB reports."""
        with tracing.span("broker.capture_webhook"):
            await self._on_webhook(session_id)

    async def _on_webhook(self, session_id: str) -> None:
        try:
            record = await self._videodb.get_capture_session(session_id)
        except NotFound:
            metrics.LIVE_WEBHOOKS.labels("unknown_session").inc()
            return
        except BrokerError:
            metrics.LIVE_WEBHOOKS.labels("videodb_failed").inc()
            return
        status = record.get("status")
        if status == "active":
            await self._activate(session_id, record)
        elif isinstance(status, str) and status in FINAL_STATUSES:
            await self._finish(session_id, status, record)
        else:
            metrics.LIVE_WEBHOOKS.labels("nothing_to_do").inc()

    async def _activate(self, session_id: str, record: dict[str, object]) -> None:
        if not await self._claims.claim(f"active:{session_id}", CLAIM_TTL_S):
            metrics.LIVE_WEBHOOKS.labels("already_started").inc()
            return
        metrics.LIVE_WEBHOOKS.labels("started").inc()
        try:
            socket = await VideoDBSocket.open(await self._videodb.websocket_url())
        except (BrokerError, SocketFailed):
            log.warning("live_pipelines_not_started", session_id=session_id, reason="socket")
            metrics.PIPELINE_STARTS.labels("socket", "failed").inc()
            return
        self._relays[session_id] = asyncio.create_task(self._relay(session_id, socket))
        for step in self._steps:
            await self._start(session_id, record, step, socket.connection_id)

    async def _start(
        self, session_id: str, record: dict[str, object], step: PipelineStep, connection_id: str
    ) -> None:
        stream_id = first_stream(record, step.channel)
        if stream_id is None:
            log.info("live_step_skipped", session_id=session_id, step=step.label, reason="channel")
            metrics.PIPELINE_STARTS.labels(step.run, "skipped").inc()
            return
        path, body = step_call(step, stream_id, connection_id)
        try:
            with tracing.span("broker.capture_step", **{"broker.capture.step": step.run}):
                await self._videodb.start_step(path, body)
        except BrokerError as exc:
            log.warning("live_step_failed", session_id=session_id, step=step.label, code=exc.code)
            metrics.PIPELINE_STARTS.labels(step.run, "failed").inc()
            return
        log.info("live_step_started", session_id=session_id, step=step.label)
        metrics.PIPELINE_STARTS.labels(step.run, "started").inc()

    async def _finish(self, session_id: str, status: str, record: dict[str, object]) -> None:
        if not await self._claims.claim(f"{status}:{session_id}", CLAIM_TTL_S):
            metrics.LIVE_WEBHOOKS.labels("already_told").inc()
            return
        await self._events.append(session_id, *status_event(status, record))
        metrics.LIVE_WEBHOOKS.labels("status").inc()

    async def _relay(self, session_id: str, socket: VideoDBSocket) -> None:
        metrics.VIDEODB_SOCKETS.inc()
        watcher = asyncio.create_task(self._until_final(session_id))
        try:
            async with asyncio.timeout(MAX_SOCKET_LIFETIME_S):
                async for message in socket.messages():
                    reduced = ai_event(message)
                    if reduced is None:
                        metrics.LIVE_EVENTS.labels("dropped").inc()
                        continue
                    await self._events.append(session_id, *reduced)
                    metrics.LIVE_EVENTS.labels("relayed").inc()
                    if watcher.done():
                        break
        except TimeoutError:
            log.warning("videodb_socket_outlived", session_id=session_id)
        finally:
            watcher.cancel()
            await socket.close()
            metrics.VIDEODB_SOCKETS.dec()
            self._relays.pop(session_id, None)

    async def _until_final(self, session_id: str) -> None:
        """Returns a grace period after the session's log shows a final status; the relay
        then closes the socket at its next message, or is cancelled by it."""
        last = 0
        while True:
            events = await self._events.after(session_id, last)
            if any(event.final for event in events):
                await asyncio.sleep(CLOSE_GRACE_S)
                relay = self._relays.get(session_id)
                if relay is not None and relay is not asyncio.current_task():
                    relay.cancel()
                return
            if events:
                last = events[-1].id
            await self._events.wait(session_id, last, FINAL_POLL_S)

    async def close(self) -> None:
        """Shutdown: every socket closed."""
        closed = await cancel_all(self._relays.values())
        if closed:
            log.info("live_sockets_closed", count=closed)
