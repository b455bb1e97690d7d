"""Prometheus metrics: the broker_ names a running app exposes, bounded labels, no secret."""

from __future__ import annotations

import platform

import respx

from app import __version__
from app.sandbox.dev_issuer import DevIssuer
from tests.conftest import APP_ORIGIN, AUDIENCE, TOKEN_PATH, Build, bearer


async def test_metrics_are_exposed_with_the_broker_prefix(
    app_client: Build, issuer: DevIssuer, network: respx.MockRouter
) -> None:
    client = await app_client()
    ada = bearer(issuer.mint("metrics-user", AUDIENCE))
    await client.post(TOKEN_PATH, headers=ada)
    await client.post(TOKEN_PATH, headers=ada)
    await client.post(TOKEN_PATH, headers=bearer("not-a-jwt"))
    resp = await client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    for name in (
        "broker_http_requests_total",
        "broker_http_request_duration_seconds",
        "broker_tokens_issued_total",
        "broker_upstream_latency_seconds",
        "broker_upstream_requests_total",
        "broker_identity_failures_total",
        "broker_rate_limited_total",
        "broker_cache_entries",
        "broker_upstream_circuit_state",
        "broker_signing_key_refreshes_total",
    ):
        assert name in text, name
    assert 'broker_tokens_issued_total{source="cache"}' in text
    assert 'broker_identity_failures_total{provider="none",reason="malformed"}' in text
    assert 'route="/v1/capture/session/token"' in text
    assert "sk-" not in text


async def test_unmatched_paths_do_not_grow_label_sets(
    app_client: Build, network: respx.MockRouter
) -> None:
    client = await app_client()
    for i in range(5):
        await client.get(f"/probe-{i}")
    text = (await client.get("/metrics")).text
    assert "probe-" not in text
    assert 'route="unmatched"' in text


async def test_made_up_methods_do_not_grow_label_sets(
    app_client: Build, network: respx.MockRouter
) -> None:
    client = await app_client()
    for i in range(5):
        await client.request(f"BREW{i}", TOKEN_PATH)
    text = (await client.get("/metrics")).text
    assert "BREW" not in text
    assert 'method="other",route="/v1/capture/session/token",status="405"' in text


async def test_build_info_names_the_version_and_the_python(
    app_client: Build, network: respx.MockRouter
) -> None:
    client = await app_client()
    text = (await client.get("/metrics")).text
    python = platform.python_version()
    assert f'broker_build_info{{python="{python}",version="{__version__}"}} 1.0' in text


async def test_cors_preflights_are_counted_under_their_route(
    app_client: Build, network: respx.MockRouter
) -> None:
    # CORS answers a preflight before routing: it still belongs to the route it asks about.
    client = await app_client()
    preflight = {"Origin": APP_ORIGIN, "Access-Control-Request-Method": "POST"}
    assert (await client.options(TOKEN_PATH, headers=preflight)).status_code == 200
    refused = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    assert (await client.options(TOKEN_PATH, headers=refused)).status_code == 403
    await client.options("/nowhere", headers=preflight)
    text = (await client.get("/metrics")).text
    route = f'route="{TOKEN_PATH}"'
    assert f'broker_http_requests_total{{method="OPTIONS",{route},status="200"}}' in text
    assert f'broker_http_requests_total{{method="OPTIONS",{route},status="403"}}' in text
    assert 'broker_http_requests_total{method="OPTIONS",route="unmatched"' in text
