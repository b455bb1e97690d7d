"""Live capture's paths (BROKER_CAPTURE_LIVE=on; off, they are 404 and not documented):
VideoDB's webhook, the owner's live feed of a session, and its export."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.capture.live.events import FeedEvent
from app.capture.live.webhooks import WEBHOOKS_PATH, session_named
from app.capture.live.wiring import Live
from app.capture.wiring import Capture
from app.errors import InvalidRequest, NotFound, RateLimited, UpstreamUnavailable
from app.identity.authenticator import Principal
from app.observability import metrics
from app.services import Services, services_of
from app.videodb.answers import SESSION_ID
from app.web.problems import NO_STORE, documented_problems
from app.web.request_body import read_body
from app.web.request_context import audit_log

SESSIONS_PATH = "/v1/capture/sessions"
MAX_WEBHOOK_BYTES = 16 * 1024
KEEP_ALIVE_S = 15  # a comment at least this often: proxies keep the stream, dead peers show
SEND_TIMEOUT_S = 30  # a client that reads nothing this long is let go

router = APIRouter(tags=["live capture"])


def _live(services: Services) -> tuple[Capture, Live]:
    capture = services.capture
    if capture is None or capture.live is None:
        raise RuntimeError("live capture is off: its routes are not mounted")
    return capture, capture.live


@router.post(WEBHOOKS_PATH + "/{segment}", include_in_schema=False)
async def receive_webhook(request: Request, segment: str) -> Response:
    """VideoDB's webhook: names a session, which is read again in the background."""
    _, live = _live(services_of(request))
    if not hmac.compare_digest(segment.encode(), live.webhook_segment.encode()):
        raise NotFound("No such path.")
    session_id = session_named(await read_body(request, MAX_WEBHOOK_BYTES))
    if session_id is None:
        metrics.LIVE_WEBHOOKS.labels("unreadable").inc()
        raise InvalidRequest("A webhook must be a JSON object naming a capture session.")
    if not live.inbox.accept(session_id):
        raise UpstreamUnavailable("Too many webhooks at once; retry shortly.", 5)
    return Response(b'{"received":true}', media_type="application/json", headers=NO_STORE)


async def _owned(request: Request, session_id: str, read: bool) -> tuple[Capture, Live, Principal]:
    """The capture bundles and the user, once the session is known to be theirs."""
    services = services_of(request)
    capture, live = _live(services)
    user = await services.authenticator.authenticate(request)
    if not SESSION_ID.fullmatch(session_id):
        raise InvalidRequest("session_id must be 1-128 characters of A-Z a-z 0-9 _ -")
    limiter = capture.read_limiter if read else capture.create_limiter
    await limiter.check(user.user_id)
    await capture.sessions.read(user.user_id, session_id)  # another user's: the same 404
    return capture, live, user


@router.get(
    SESSIONS_PATH + "/{session_id}/events",
    summary="Follow the live events of a capture session of the authenticated user (SSE)",
    response_class=EventSourceResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "the live feed"},
        **documented_problems(401, 404, 422, 429, 502, 503, 504, s404="(not this user's)"),
    },
)
async def follow_capture_session(request: Request, session_id: str) -> EventSourceResponse:
    """Server-Sent Events: replayed after Last-Event-ID, then live, until a final status."""
    _, live, user = await _owned(request, session_id, read=True)
    last_id = _last_event_id(request.headers.get("last-event-id"))
    lease = await live.feeds.take(user.user_id)
    if lease is None:
        raise RateLimited(
            "Too many open feeds for this user; close one first.", headers={"Retry-After": "15"}
        )
    stream = _feed(live, user.user_id, lease, session_id, last_id)
    return EventSourceResponse(
        stream,
        ping=KEEP_ALIVE_S,
        send_timeout=SEND_TIMEOUT_S,
        headers={**NO_STORE, "X-Accel-Buffering": "no"},
    )


def _last_event_id(value: str | None) -> int:
    if value is None or not value.strip():
        return 0
    if not value.strip().isdigit() or len(value.strip()) > 18:
        raise InvalidRequest("Last-Event-ID must be the id of an event of this feed.")
    return int(value.strip())


async def _feed(
    live: Live, user_id: str, lease: str, session_id: str, last_id: int
) -> AsyncIterator[ServerSentEvent]:
    metrics.OPEN_FEEDS.inc()
    try:
        while True:
            events: list[FeedEvent] = await live.events.after(session_id, last_id)
            for event in events:
                last_id = event.id
                yield ServerSentEvent(data=event.data, event=event.event, id=str(event.id))
                if event.final:
                    return
            await live.events.wait(session_id, last_id, KEEP_ALIVE_S)
            await live.feeds.renew(user_id, lease)
    finally:
        metrics.OPEN_FEEDS.dec()
        await live.feeds.give_back(user_id, lease)


class ExportView(BaseModel):
    """Where an export stands; the video's ids and URLs once exported."""

    session_id: str
    export_status: str
    video_id: str | None = None
    stream_url: str | None = None
    player_url: str | None = None


@router.post(
    SESSIONS_PATH + "/{session_id}/export",
    response_model=ExportView,
    summary="Export (or poll the export of) a capture session of the authenticated user",
    responses=documented_problems(401, 404, 422, 429, 502, 503, 504, s404="(not this user's)"),
)
async def export_capture_session(request: Request, session_id: str) -> Response:
    """VideoDB's export, called again to poll; owner only."""
    services = services_of(request)
    capture, _ = _live(services)
    user = await services.authenticator.authenticate(request)
    if not SESSION_ID.fullmatch(session_id):
        raise InvalidRequest("session_id must be 1-128 characters of A-Z a-z 0-9 _ -")
    await capture.create_limiter.check(user.user_id)
    view = await capture.sessions.export(user.user_id, session_id)
    audit_log.info(
        "capture_session_export",
        session_id=session_id,
        user_id=user.user_id,
        provider=user.provider,
        export_status=view["export_status"],
    )
    return Response(orjson.dumps(view), media_type="application/json", headers=NO_STORE)
