"""The built-in stand-in for VideoDB answers as VideoDB's published spec says, and refuses a
request without the key as VideoDB does."""

from __future__ import annotations

import time

import httpx
import pytest

from app.sandbox.stand_in_videodb import StandInVideoDB

KEY = "sk-stand-in-0123456789"


@pytest.fixture
def videodb() -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=StandInVideoDB(KEY))
    return httpx.AsyncClient(transport=transport, base_url="http://videodb.test")


async def test_a_token_for_the_lifetime_asked(videodb: httpx.AsyncClient) -> None:
    resp = await videodb.post(
        "/capture/session/token",
        json={"user_id": "ada", "expires_in": 600},
        headers={"x-access-token": KEY},
    )
    assert resp.status_code == 200
    data = resp.json()["data"]
    assert resp.json()["success"] is True
    assert data["token"].startswith("st-")
    assert data["expires_in"] == 600
    assert abs(data["expires_at"] - (time.time() + 600)) < 5


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({}, b'{"user_id": "ada"}', 401),
        ({"x-access-token": "sk-wrong-0123456789"}, b'{"user_id": "ada"}', 401),
        ({"x-access-token": KEY}, b"not json", 400),
        ({"x-access-token": KEY}, b'{"expires_in": -1}', 400),
        ({"x-access-token": KEY}, b'{"expires_in": "soon"}', 400),
    ],
)
async def test_refusals_as_videodb_gives_them(
    videodb: httpx.AsyncClient, headers: dict[str, str], body: bytes, status: int
) -> None:
    resp = await videodb.post("/capture/session/token", content=body, headers=headers)
    assert resp.status_code == status
    assert resp.json()["success"] is False


async def test_a_session_is_created_and_read_back_as_videodb_keeps_it(
    videodb: httpx.AsyncClient,
) -> None:
    key = {"x-access-token": KEY}
    path = "/collection/default/capture/session"
    asked = {"end_user_id": "ada", "ws_connection_id": "ws-1", "metadata": {"app": "desk"}}
    created = await videodb.post(path, json=asked, headers=key)
    assert created.status_code == 200
    record = created.json()["data"]
    assert {k: record[k] for k in asked} == asked
    assert (record["collection_id"], record["status"]) == ("default", "created")
    read = await videodb.get(f"{path}/{record['session_id']}", headers=key)
    assert read.json()["data"] == record
    assert (await videodb.get(f"{path}/{record['session_id']}")).status_code == 401
    assert (await videodb.get(f"{path}/cap-unknown", headers=key)).status_code == 404
    assert (await videodb.post(path, json={}, headers=key)).status_code == 400
