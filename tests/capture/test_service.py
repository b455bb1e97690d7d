"""The capture service on its own: the token before the session, the user id from the caller
only, and the owner's view filtered to the contract's fields."""

from __future__ import annotations

from typing import Any

import pytest

from app.capture.service import CaptureSessions, public_view
from app.errors import NotFound, UpstreamUnavailable
from app.tokens.cache import LocalTokenCache
from app.tokens.service import TokenService
from app.videodb.answers import CaptureSession
from tests.fakes.minter import CountingMinter


class _VideoDB:
    """The resilient VideoDB client's capture-session side, recording what it was asked."""

    def __init__(self, record: dict[str, Any] | None = None) -> None:
        self.created: list[dict[str, object]] = []
        self.exported: list[str] = []
        self.record = record

    async def create_capture_session(self, payload: dict[str, object]) -> CaptureSession:
        self.created.append(payload)
        return CaptureSession("cap-1", "created", "default")

    async def get_capture_session(self, session_id: str) -> dict[str, object]:
        if self.record is None:
            raise NotFound("No such capture session.")
        return self.record

    async def export_session(self, session_id: str) -> dict[str, object]:
        self.exported.append(session_id)
        return {"export_status": "exporting", "video_channel_id": "never-passed-on"}


def _service(videodb: _VideoDB, minter: CountingMinter, callback: str | None = None) -> Any:
    tokens = TokenService(minter, LocalTokenCache(10), None, "https://v", deadline=5)
    return CaptureSessions(videodb, tokens, callback)


async def test_the_token_comes_first_and_the_session_names_the_verified_user() -> None:
    videodb, minter = _VideoDB(), CountingMinter()
    created = await _service(videodb, minter, "https://hook.example/x").create(
        "ada", 600, ws_connection_id="ws-1", metadata={"k": 1}
    )
    assert created.issued.minted.token.startswith("st-ada")
    assert videodb.created == [
        {
            "end_user_id": "ada",
            "callback_url": "https://hook.example/x",
            "ws_connection_id": "ws-1",
            "metadata": {"k": 1},
        }
    ]


async def test_no_session_without_a_token() -> None:
    videodb = _VideoDB()
    with pytest.raises(UpstreamUnavailable):
        await _service(videodb, CountingMinter(fail=True)).create("ada", 600)
    assert videodb.created == []


async def test_only_the_owner_reads_a_session() -> None:
    record = {"session_id": "cap-1", "end_user_id": "ada", "status": "active"}
    service = _service(_VideoDB(record), CountingMinter())
    assert (await service.read("ada", "cap-1"))["status"] == "active"
    with pytest.raises(NotFound):
        await service.read("mallory", "cap-1")
    with pytest.raises(NotFound):
        await service.read("ada", "../token")


def test_the_view_keeps_the_contracts_fields_only() -> None:
    record = {
        "id": "cap-9",
        "status": "stopped",
        "end_user_id": "ada",
        "callback_url": "https://hook.example/secret-path",
        "rtstreams": [{"rtstream_id": "rts-1"}],
        "channels": [{"channel_id": "screen", "RTStream_Id": "rts-2"}, "odd"],
        "export_status": "exported",
        "exported_video_id": "m-1",
    }
    assert public_view(record) == {
        "session_id": "cap-9",
        "status": "stopped",
        "channels": [{"channel_id": "screen"}, "odd"],
        "export_status": "exported",
        "exported_video_id": "m-1",
    }
