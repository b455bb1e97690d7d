"""Live capture (BROKER_CAPTURE_LIVE=on): the rest of VideoDB's capture backend.

The broker receives the sessions' webhooks (`webhooks.py`), believes only what VideoDB says
when asked again, starts the operator's AI steps once per session on one VideoDB WebSocket
(`pipelines.py`, `videodb_socket.py`), and relays what arrives, reduced (`events.py`), into
each session's bounded event log (`event_log.py`: in process, or a Redis stream any replica
reads), which the owner's feed replays and follows.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable


async def cancel_all(tasks: Iterable[asyncio.Task[None]]) -> int:
    """Cancel these tasks and wait for each to end (shutdown); how many there were."""
    pending = list(tasks)
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return len(pending)
