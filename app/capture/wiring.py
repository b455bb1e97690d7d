"""Capture sessions' part of start-up (BROKER_CAPTURE_SESSIONS=on): one optional bundle."""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Protocol

from app.capture.live.pipelines import LiveVideoDB
from app.capture.live.webhooks import callback_url
from app.capture.live.wiring import Live, start_live
from app.capture.service import CaptureSessions, SessionStore
from app.config import Settings
from app.infra.rate_limits import LimitStore, UserRateLimiter
from app.infra.redis_state import SharedState
from app.tokens.service import TokenService


@dataclass(frozen=True, slots=True)
class Capture:
    """The sessions, and the per-user limits on creating and on reading them."""

    sessions: CaptureSessions
    create_limiter: UserRateLimiter
    read_limiter: UserRateLimiter  # reading one's sessions never spends the creation limit
    live: Live | None = None  # BROKER_CAPTURE_LIVE=on only


async def start_capture(
    settings: Settings,
    videodb: CaptureVideoDB,
    tokens: TokenService,
    limits: LimitStore,
    shared: SharedState | None,
    stack: AsyncExitStack,
) -> Capture | None:
    """The capture bundle, or None when capture sessions are off."""
    if not settings.capture_sessions_on:
        return None
    live = await start_live(settings, videodb, shared, stack)
    callback = settings.capture_callback_url
    if live is not None and settings.public_url and settings.capture_webhook_secret:
        callback = callback_url(settings.public_url, settings.capture_webhook_secret)
    return Capture(
        sessions=CaptureSessions(videodb, tokens, callback),
        create_limiter=UserRateLimiter(
            settings.capture_rate_limit, limits, "capture", "capture sessions"
        ),
        read_limiter=UserRateLimiter(
            settings.capture_read_rate_limit, limits, "capture_read", "capture session reads"
        ),
        live=live,
    )


class CaptureVideoDB(SessionStore, LiveVideoDB, Protocol):
    """What capture, live capture included, calls at VideoDB."""
