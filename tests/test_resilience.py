"""Retries within the deadline, the circuit breaker, and what the endpoint says about them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import respx

from app.circuit_breaker import CircuitBreaker, CircuitOpen
from app.errors import UpstreamError, UpstreamUnavailable
from app.resilient_upstream import ResilientVideoDB
from app.sandbox.dev_issuer import DevIssuer
from tests.conftest import AUDIENCE, TOKEN_PATH, bearer, upstream_ok

Build = Callable[..., Any]


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


async def test_an_outage_costs_videodb_few_calls_and_readiness_shows_it(
    app_client: Build,
    make_settings: Callable[..., Any],
    issuer: DevIssuer,
    network: respx.MockRouter,
) -> None:
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
    await asyncio.sleep(1.6)
    network["videodb"].mock(side_effect=upstream_ok)
    ok = await client.post(TOKEN_PATH, headers=bearer(issuer.mint("after", AUDIENCE)))
    assert ok.status_code == 200
    assert (await client.get("/readyz")).status_code == 200


def _outcomes(exposition: str) -> dict[str, float]:
    found = {}
    for line in exposition.splitlines():
        if line.startswith("broker_upstream_requests_total{"):
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
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=0.05)
    with pytest.raises(UpstreamUnavailable):
        async with breaker.guard():
            raise UpstreamUnavailable("down", 1)
    assert _state(breaker) == "open"
    await asyncio.sleep(0.06)
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
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=0.05)
    for _ in range(5):
        with pytest.raises(UpstreamError):
            async with breaker.guard():
                raise UpstreamError("refused")
    assert _state(breaker) == "closed"
    for _ in range(2):
        with pytest.raises(UpstreamUnavailable):
            async with breaker.guard():
                raise UpstreamUnavailable("down", 1)
    await asyncio.sleep(0.06)
    with pytest.raises(UpstreamUnavailable):
        async with breaker.guard():
            raise UpstreamUnavailable("still down", 1)
    assert _state(breaker) == "open"


def _state(breaker: CircuitBreaker) -> str:
    """Read the state afresh (it changes with time, which type narrowing cannot know)."""
    return breaker.state


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
