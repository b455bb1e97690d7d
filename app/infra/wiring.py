"""The shared infrastructure's part of start-up: Redis when configured, the limit store."""

from __future__ import annotations

from contextlib import AsyncExitStack

import structlog

from app.config import Settings
from app.infra.rate_limits import LimitStore
from app.infra.redis_state import SharedState

log = structlog.get_logger(logger_name=__name__)


async def start_shared_state(settings: Settings, stack: AsyncExitStack) -> SharedState | None:
    """The Redis replicas share, or None; closed with the stack. Unreachable at start is a
    warning: the broker serves from this process until Redis answers."""
    target = settings.redis_target
    if target is None:
        return None
    shared = SharedState(target)
    stack.push_async_callback(shared.close)
    if not await shared.ping():
        log.warning("redis_unreachable_at_start", fallback="in-process cache and limits")
    return shared


def limit_store(shared: SharedState | None) -> LimitStore:
    """Where every per-user limit counts."""
    return LimitStore(shared)
