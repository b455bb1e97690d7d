"""What an owner's feed may carry: VideoDB's live messages reduced to the contract's fields,
and the session's status. Nothing else of VideoDB's (no id, URL or other field) passes."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

# VideoDB's channel names -> the feed's event names (scene_index and visual_index are one).
AI_EVENTS = {
    "transcript": "transcript",
    "audio_index": "audio_index",
    "scene_index": "visual_index",
    "visual_index": "visual_index",
}
FINAL_STATUSES = frozenset({"stopped", "failed", "exported"})
MAX_TEXT_CHARS = 8192
MAX_MESSAGE_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class FeedEvent:
    """One event of a session's feed: its number, its name and its JSON data."""

    id: int
    event: str
    data: str  # JSON text

    @property
    def final(self) -> bool:
        """A final status: the feed ends after it."""
        return self.event == "status" and json.loads(self.data).get("status") in FINAL_STATUSES


def ai_event(message: str | bytes) -> tuple[str, dict[str, Any]] | None:
    """The feed's event for one VideoDB WebSocket message; None to drop it (not JSON, no
    known channel, nothing the contract passes on)."""
    if len(message) > MAX_MESSAGE_BYTES:
        return None
    try:
        document = json.loads(message)
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    channel = document.get("channel")
    event = AI_EVENTS.get(channel) if isinstance(channel, str) else None
    data = document.get("data")
    if event is None or not isinstance(data, dict):
        return None
    reduced: dict[str, Any] = {}
    text = data.get("text")
    if isinstance(text, str):
        reduced["text"] = text[:MAX_TEXT_CHARS]
    if isinstance(data.get("is_final"), bool):
        reduced["is_final"] = data["is_final"]
    for bound in ("start", "end"):
        value = data.get(bound)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            reduced[bound] = value
    return (event, reduced) if reduced else None


def status_event(status: str, record: dict[str, object]) -> tuple[str, dict[str, Any]]:
    """A `status` event: the status, and the exported video's id once exported."""
    data: dict[str, Any] = {"status": status}
    video = record.get("exported_video_id")
    if status == "exported" and isinstance(video, str) and video.isprintable() and len(video) < 256:
        data["exported_video_id"] = video
    return "status", data
