"""What reaches an owner's feed of VideoDB's live messages: the contract's fields alone."""

from __future__ import annotations

import json

import pytest

from app.capture.live.events import FeedEvent, ai_event, status_event
from app.capture.live.pipelines import first_stream


def test_an_ai_message_keeps_only_text_is_final_start_and_end() -> None:
    message = {
        "channel": "transcript",
        "data": {
            "text": "hello",
            "is_final": False,
            "start": 1,
            "end": 2.5,
            "rtstream_id": "rts-secret",
            "url": "https://internal",
        },
        "connection_id": "conn-secret",
    }
    assert ai_event(json.dumps(message)) == (
        "transcript",
        {"text": "hello", "is_final": False, "start": 1, "end": 2.5},
    )


@pytest.mark.parametrize("channel", ["scene_index", "visual_index"])
def test_videodbs_two_visual_channels_are_one_event(channel: str) -> None:
    assert ai_event(json.dumps({"channel": channel, "data": {"text": "a slide"}})) == (
        "visual_index",
        {"text": "a slide"},
    )


@pytest.mark.parametrize(
    "message",
    [
        "not json",
        "[1, 2]",
        json.dumps({"channel": "unknown", "data": {"text": "x"}}),
        json.dumps({"channel": ["transcript"], "data": {"text": "x"}}),
        json.dumps({"channel": "transcript", "data": "text"}),
        json.dumps({"channel": "transcript", "data": {"start": True, "end": float("nan")}}),
        "[" * 5000,
    ],
)
def test_a_message_with_nothing_the_contract_passes_is_dropped(message: str) -> None:
    assert ai_event(message) is None


def test_a_status_event_names_the_exported_video_only_once_exported() -> None:
    record: dict[str, object] = {"exported_video_id": "m-1", "callback_url": "https://secret"}
    assert status_event("exported", record) == (
        "status",
        {"status": "exported", "exported_video_id": "m-1"},
    )
    assert status_event("failed", record) == ("status", {"status": "failed"})
    assert FeedEvent(3, "status", '{"status":"stopped"}').final
    assert not FeedEvent(4, "status", '{"status":"active"}').final


def test_streams_are_picked_by_channel_in_either_spelling() -> None:
    record: dict[str, object] = {
        "rtstreams": [
            {"rtstream_id": "a/../b", "channel_id": "mic"},  # not an id that goes in a path
            {"id": "rts-2", "channel_id": "MICS"},
            {"rtstream_id": "rts-3", "channel_id": "displays"},
        ]
    }
    assert first_stream(record, "mic") == "rts-2"
    assert first_stream(record, "screen") == "rts-3"
    assert first_stream(record, "system_audio") is None
    assert first_stream({"rtstreams": "nope"}, "mic") is None
