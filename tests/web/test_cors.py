"""CORS for the configured origins only: preflights answered for them, refused as problems
for anyone else, and credentials allowed only in the cookie mode."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import respx

from tests.conftest import APP_ORIGIN, TOKEN_PATH, Build

PREFLIGHT = {
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type",
}


async def test_a_listed_origin_gets_its_preflight(
    app_client: Build, network: respx.MockRouter
) -> None:
    client = await app_client()
    resp = await client.options(TOKEN_PATH, headers={"Origin": APP_ORIGIN, **PREFLIGHT})
    assert resp.status_code == 200
    assert resp.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "POST" in resp.headers["access-control-allow-methods"]
    assert "authorization" in resp.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in resp.headers  # no cookie mode


async def test_another_origin_gets_a_problem_and_no_allowance(
    app_client: Build, network: respx.MockRouter
) -> None:
    client = await app_client()
    resp = await client.options(TOKEN_PATH, headers={"Origin": "https://evil.example", **PREFLIGHT})
    assert resp.status_code == 403
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["code"] == "origin_not_allowed"
    assert "access-control-allow-origin" not in resp.headers


async def test_a_method_the_broker_does_not_take_is_refused_even_for_a_listed_origin(
    app_client: Build, network: respx.MockRouter
) -> None:
    client = await app_client()
    resp = await client.options(
        TOKEN_PATH,
        headers={"Origin": APP_ORIGIN, "Access-Control-Request-Method": "DELETE"},
    )
    assert resp.status_code == 403
    assert "method or header" in resp.json()["detail"]


async def test_credentials_are_allowed_in_the_cookie_mode_only(
    app_client: Build, make_settings: Callable[..., Any], network: respx.MockRouter
) -> None:
    client = await app_client(make_settings(auth_cookie_name="__Host-vtb"))
    resp = await client.options(TOKEN_PATH, headers={"Origin": APP_ORIGIN, **PREFLIGHT})
    assert resp.headers["access-control-allow-credentials"] == "true"
    assert resp.headers["access-control-allow-origin"] == APP_ORIGIN  # never "*"


async def test_without_origins_there_is_no_cors_layer(
    app_client: Build, make_settings: Callable[..., Any], network: respx.MockRouter
) -> None:
    client = await app_client(make_settings(cors_origins=[]))
    resp = await client.options(TOKEN_PATH, headers={"Origin": APP_ORIGIN, **PREFLIGHT})
    assert "access-control-allow-origin" not in resp.headers


async def test_a_listed_origin_may_read_a_session_and_resume_its_feed(
    app_client: Build, network: respx.MockRouter
) -> None:
    """What the clients send to follow a session: a GET with the bearer, and Last-Event-ID
    when a feed is resumed; still for the listed origins only."""
    feed = "/v1/capture/sessions/cap-1/events"
    wanted = {
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization, last-event-id",
    }
    client = await app_client()
    resp = await client.options(feed, headers={"Origin": APP_ORIGIN, **wanted})
    assert resp.status_code == 200
    assert resp.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "GET" in resp.headers["access-control-allow-methods"]
    assert "last-event-id" in resp.headers["access-control-allow-headers"].lower()
    elsewhere = await client.options(feed, headers={"Origin": "https://evil.example", **wanted})
    assert elsewhere.status_code == 403
    assert "access-control-allow-origin" not in elsewhere.headers
