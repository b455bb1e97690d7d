"""The circuit breaker: open after repeated failures, one probe when half-open, and what
the endpoint, readiness and the metrics say about it."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import respx

from app.errors import UpstreamError, UpstreamUnavailable
from app.sandbox.dev_issuer import DevIssuer
from app.videodb.circuit_breaker import CircuitBreaker, CircuitOpen
from tests.conftest import AUDIENCE, TOKEN_PATH, Build, bearer, upstream_ok
from tests.fakes.clock import FakeClock


async def test_an_outage_costs_videodb_few_calls_and_readiness_shows_it(
    app_client: Build,
    make_settings: Callable[..., Any],
    issuer: DevIssuer,
    network: respx.MockRouter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()  # the app's breaker is built with it
    monkeypatch.setattr(
        "app.videodb.wiring.CircuitBreaker", functools.partial(CircuitBreaker, clock=clock)
    )
    network["videodb"].mock(return_value=httpx.Response(500))
    client = await app_client(
        make_settings(
            circuit_failure_threshold=3, circuit_reset_seconds=1.5, rate_limit="1000/minute"
        )
    )
    tokens = [issuer.mint(f"u{i}", AUDIENCE) for i in range(30)]
    statuses = []
    for token in tokens:
        resp = await client.post(TOKEN_PATH, headers=bearer(token))
        statuses.append(resp.status_code)
        assert int(resp.headers["retry-after"]) >= 1
    assert set(statuses) == {503}
    assert network["videodb"].call_count == 3  # then the circuit holds the rest back
    ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["upstream_circuit"].startswith("open")
    clock.advance(1.5)
    network["videodb"].mock(side_effect=upstream_ok)
    ok = await client.post(TOKEN_PATH, headers=bearer(issuer.mint("after", AUDIENCE)))
    assert ok.status_code == 200
    assert (await client.get("/readyz")).status_code == 200


def _outcomes(exposition: str) -> dict[str, float]:
    """The token call's outcomes (another operation's series of the same outcome, left by an
    earlier test in this process, must not stand in for them)."""
    found = {}
    for line in exposition.splitlines():
        if line.startswith('broker_upstream_requests_total{operation="token",'):
            label, value = line.split("} ")
            found[label.split('outcome="')[1].rstrip('"')] = float(value)
    return found


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, text="[" * 30_000 + "]" * 30_000),  # nested past the parser
        httpx.Response(200, json={"success": True, "data": {"token": "not-st"}}),
        httpx.Response(200, text="<html>maintenance</html>"),
    ],
)
async def test_unusable_answers_count_as_failures_for_the_breaker_and_the_metrics(
    app_client: Build,
    make_settings: Callable[..., Any],
    issuer: DevIssuer,
    network: respx.MockRouter,
    answer: httpx.Response,
) -> None:
    network["videodb"].mock(return_value=answer)
    client = await app_client(make_settings(circuit_failure_threshold=2, rate_limit="1000/minute"))
    before = _outcomes((await client.get("/metrics")).text)
    statuses = []
    for i in range(4):
        resp = await client.post(TOKEN_PATH, headers=bearer(issuer.mint(f"u{i}", AUDIENCE)))
        statuses.append((resp.status_code, resp.json()["code"]))
    assert statuses[:2] == [(502, "upstream_error")] * 2
    assert statuses[2:] == [(503, "upstream_unavailable")] * 2  # the circuit opened
    assert network["videodb"].call_count == 2
    after = _outcomes((await client.get("/metrics")).text)
    assert after.get("unusable", 0) - before.get("unusable", 0) == 2
    assert after.get("ok", 0) == before.get("ok", 0)
    assert after.get("circuit_open", 0) - before.get("circuit_open", 0) == 2


async def test_half_open_lets_exactly_one_probe_through() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=15, clock=clock)
    with pytest.raises(UpstreamUnavailable):
        async with breaker.guard():
            raise UpstreamUnavailable("down", 1)
    assert _state(breaker) == "open"
    clock.advance(14.9)
    with pytest.raises(CircuitOpen) as held:
        async with breaker.guard():
            pass
    assert held.value.retry_after == 1  # the seconds left, rounded up
    clock.advance(0.1)
    assert _state(breaker) == "half_open"
    probe_started = asyncio.Event()
    release = asyncio.Event()

    async def probe() -> None:
        async with breaker.guard():
            probe_started.set()
            await release.wait()

    task = asyncio.create_task(probe())
    await probe_started.wait()
    with pytest.raises(CircuitOpen):
        async with breaker.guard():
            pass
    release.set()
    await task
    assert _state(breaker) == "closed"


async def test_a_failed_probe_reopens_and_other_errors_do_not_count() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=15, clock=clock)
    for _ in range(5):
        with pytest.raises(UpstreamError):
            async with breaker.guard():
                raise UpstreamError("refused")
    assert _state(breaker) == "closed"
    for _ in range(2):
        with pytest.raises(UpstreamUnavailable):
            async with breaker.guard():
                raise UpstreamUnavailable("down", 1)
    clock.advance(15)
    with pytest.raises(UpstreamUnavailable):
        async with breaker.guard():
            raise UpstreamUnavailable("still down", 1)
    assert _state(breaker) == "open"
    clock.advance(14.9)  # a full reset interval again, counted from the failed probe
    assert _state(breaker) == "open"


def _state(breaker: CircuitBreaker) -> str:
    """Read the state afresh (it changes with time, which type narrowing cannot know)."""
    return breaker.state
