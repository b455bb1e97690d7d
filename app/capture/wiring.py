"""Capture sessions' part of start-up (BROKER_CAPTURE_SESSIONS=on): one optional bundle."""

from __future__ import annotations

from dataclasses import dataclass

from app.capture.service import CaptureSessions, SessionStore
from app.config import Settings
from app.infra.rate_limits import LimitStore, UserRateLimiter
from app.tokens.service import TokenService


@dataclass(frozen=True, slots=True)
class Capture:
    """The sessions, and the per-user limits on creating and on reading them."""

    sessions: CaptureSessions
    create_limiter: UserRateLimiter
    read_limiter: UserRateLimiter  # reading one's sessions never spends the creation limit


def build_capture(
    settings: Settings, videodb: SessionStore, tokens: TokenService, limits: LimitStore
) -> Capture | None:
    """The capture bundle, or None when capture sessions are off."""
    if not settings.capture_sessions_on:
        return None
    return Capture(
        sessions=CaptureSessions(videodb, tokens, settings.capture_callback_url),
        create_limiter=UserRateLimiter(
            settings.capture_rate_limit, limits, "capture", "capture sessions"
        ),
        read_limiter=UserRateLimiter(
            settings.capture_read_rate_limit, limits, "capture_read", "capture session reads"
        ),
    )
