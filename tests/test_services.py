"""Typed access to the lifespan's services: present once the lifespan ran, an error before."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
import respx
from asgi_lifespan import LifespanManager
from fastapi import Request

from app.main import create_app
from app.services import Services, services_in, services_of


def test_no_lifespan_no_services() -> None:
    for scope in ({"type": "http"}, {"type": "http", "state": {}}, {"state": {"services": 1}}):
        with pytest.raises(RuntimeError, match="lifespan"):
            services_in(scope)


async def test_the_lifespan_hands_one_set_of_services_to_every_request(
    make_settings: Callable[..., Any], network: respx.MockRouter
) -> None:
    settings = make_settings()
    seen: list[Services] = []
    app = create_app(settings)

    async def probe(request: Request) -> dict[str, str]:
        seen.append(services_of(request))
        return {}

    app.add_api_route("/probe", probe)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://b.test") as client:
            for _ in range(2):
                assert (await client.get("/probe")).status_code == 200
    first, second = seen
    assert first is second  # built once, shared by every request
    assert first.settings is settings
    assert first.shared_state is None  # no Redis configured
