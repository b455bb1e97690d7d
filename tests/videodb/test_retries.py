"""Retries within the deadline, the circuit breaker, and what the endpoint says about them."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import respx

from app.errors import UpstreamUnavailable
from app.sandbox.dev_issuer import DevIssuer
from app.videodb.circuit_breaker import CircuitBreaker
from app.videodb.retries import ResilientVideoDB
from tests.conftest import AUDIENCE, TOKEN_PATH, Build, bearer, upstream_ok


def _sequence(*responses: Any) -> Callable[[httpx.Request], httpx.Response]:
    queue = list(responses)

    def respond(request: httpx.Request) -> httpx.Response:
        item = queue.pop(0) if queue else None
        if item is None:
            return upstream_ok(request)
        if isinstance(item, Exception):
            raise item
        assert isinstance(item, httpx.Response)
        return item

    return respond


async def test_transient_failures_are_retried_within_the_deadline(
    app_client: Build, issuer: DevIssuer, network: respx.MockRouter
) -> None:
    network["videodb"].mock(side_effect=_sequence(httpx.ConnectError("reset"), httpx.Response(502)))
    client = await app_client()
    resp = await client.post(TOKEN_PATH, headers=bearer(issuer.mint("u", AUDIENCE)))
    assert resp.status_code == 200
    assert network["videodb"].call_count == 3


async def test_short_retry_after_is_honoured(
    app_client: Build, issuer: DevIssuer, network: respx.MockRouter
) -> None:
    network["videodb"].mock(
        side_effect=_sequence(httpx.Response(429, headers={"Retry-After": "1"}))
    )
    client = await app_client()
    started = time.monotonic()
    resp = await client.post(TOKEN_PATH, headers=bearer(issuer.mint("u", AUDIENCE)))
    assert resp.status_code == 200
    assert time.monotonic() - started >= 0.95


async def test_long_retry_after_is_not_waited_for(
    app_client: Build, issuer: DevIssuer, network: respx.MockRouter
) -> None:
    network["videodb"].mock(return_value=httpx.Response(429, headers={"Retry-After": "60"}))
    client = await app_client()
    resp = await client.post(TOKEN_PATH, headers=bearer(issuer.mint("u", AUDIENCE)))
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "60"
    assert network["videodb"].call_count == 1


async def test_refusals_are_not_retried(
    app_client: Build, issuer: DevIssuer, network: respx.MockRouter
) -> None:
    network["videodb"].mock(return_value=httpx.Response(401))
    client = await app_client()
    resp = await client.post(TOKEN_PATH, headers=bearer(issuer.mint("u", AUDIENCE)))
    assert resp.status_code == 502
    assert network["videodb"].call_count == 1


class _AlwaysBusy:
    """A VideoDB client whose every call is a 503 with a short Retry-After."""

    def __init__(self, hint: int) -> None:
        self.hint = hint
        self.budgets: list[float] = []

    async def mint(self, user_id: str, expires_in: int, budget: float | None = None) -> Any:
        assert budget is not None
        self.budgets.append(budget)
        raise UpstreamUnavailable("busy", self.hint, self.hint)


@pytest.mark.parametrize(
    ("deadline", "calls"),
    [(10.0, 3), (1.5, 2)],  # three attempts at most; fewer when the deadline comes first
)
async def test_retries_stop_at_the_attempt_cap_or_the_deadline(deadline: float, calls: int) -> None:
    client = _AlwaysBusy(hint=1)
    upstream = ResilientVideoDB(client, CircuitBreaker(100, 30), deadline)  # type: ignore[arg-type]
    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable):
        await upstream.mint("u", 600)
    elapsed = time.monotonic() - started
    assert len(client.budgets) == calls
    assert elapsed < min(deadline, calls * 1.0 + 0.5)
    # Each attempt gets only what is left of the one deadline.
    assert client.budgets[0] == pytest.approx(deadline, abs=0.05)
    assert client.budgets[1] == pytest.approx(deadline - 1.0, abs=0.1)
