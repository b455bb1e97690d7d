"""VideoDB's webhooks: an unguessable path, a body that is never believed, a fast answer.

The path's last segment is derived from BROKER_CAPTURE_WEBHOOK_SECRET (an HMAC, so the
secret itself is never sent anywhere). Anyone who learns the URL can post anything to it,
so a webhook only names a session: the broker reads that session again from VideoDB and
acts on what VideoDB reports, in the background (VideoDB does not wait on the pipelines).
A forged or replayed webhook can cause one read at most, and not even that while a read of
the same session is already under way here.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Coroutine
from typing import Any

from pydantic import SecretStr

from app.capture.live import cancel_all
from app.observability import metrics
from app.videodb.answers import SESSION_ID

WEBHOOKS_PATH = "/v1/capture/webhooks"
MAX_PENDING = 256  # sessions being read again at once, per process
_DERIVATION = b"videodb-token-broker webhook path v1"


def webhook_segment(secret: SecretStr) -> str:
    """The path segment VideoDB posts to: HMAC-SHA256 of a fixed label, base64url."""
    digest = hmac.new(secret.get_secret_value().encode(), _DERIVATION, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def callback_url(public_url: str, secret: SecretStr) -> str:
    """Where the sessions the broker creates send their webhooks."""
    return f"{public_url}{WEBHOOKS_PATH}/{webhook_segment(secret)}"


def session_named(body: bytes) -> str | None:
    """The session id a webhook body names (`capture_session_id`, or `session_id`)."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    for name in ("capture_session_id", "session_id"):
        value = document.get(name)
        if isinstance(value, str) and SESSION_ID.fullmatch(value):
            return value
    return None


class WebhookInbox:
    """Sessions to read again, in the background; one read per session at a time."""

    def __init__(self, handle: Callable[[str], Coroutine[Any, Any, None]]) -> None:
        self._handle = handle
        self._pending: dict[str, asyncio.Task[None]] = {}

    def accept(self, session_id: str) -> bool:
        """Queue a read of this session; False when too many are under way (a 503)."""
        if session_id in self._pending:
            metrics.LIVE_WEBHOOKS.labels("coalesced").inc()
            return True
        if len(self._pending) >= MAX_PENDING:
            metrics.LIVE_WEBHOOKS.labels("shed").inc()
            return False
        task = asyncio.create_task(self._handle(session_id))
        self._pending[session_id] = task
        task.add_done_callback(lambda _: self._pending.pop(session_id, None))
        return True

    async def close(self) -> None:
        """Shutdown: reads under way are abandoned (VideoDB retries its webhooks)."""
        await cancel_all(self._pending.values())
