"""Live capture's part of start-up (BROKER_CAPTURE_LIVE=on): one optional bundle."""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass

from app.capture.live.claims import Claims, FeedSlots
from app.capture.live.event_log import EventLog, LocalEventLog, RedisEventLog
from app.capture.live.pipelines import LivePipelines, LiveVideoDB
from app.capture.live.webhooks import WebhookInbox, webhook_segment
from app.config import Settings
from app.infra.redis_state import SharedState


@dataclass(frozen=True, slots=True)
class Live:
    """The webhooks' inbox and work, the sessions' event logs, the owners' feed slots."""

    webhook_segment: str
    inbox: WebhookInbox
    pipelines: LivePipelines
    events: EventLog
    feeds: FeedSlots


async def start_live(
    settings: Settings, videodb: LiveVideoDB, shared: SharedState | None, stack: AsyncExitStack
) -> Live | None:
    """The bundle, or None when live capture is off; its sockets and tasks close with the
    stack."""
    if not settings.capture_live_on or settings.capture_webhook_secret is None:
        return None
    events: EventLog
    if shared is not None:
        shared_log = RedisEventLog(shared)
        shared_log.start()
        events = shared_log
    else:
        events = LocalEventLog()
    stack.push_async_callback(events.close)
    pipelines = LivePipelines(videodb, events, Claims(shared), settings.capture_pipelines)
    stack.push_async_callback(pipelines.close)
    inbox = WebhookInbox(pipelines.on_webhook)
    stack.push_async_callback(inbox.close)
    return Live(
        webhook_segment=webhook_segment(settings.capture_webhook_secret),
        inbox=inbox,
        pipelines=pipelines,
        events=events,
        feeds=FeedSlots(shared),
    )
