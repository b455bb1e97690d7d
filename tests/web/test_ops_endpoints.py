"""What orchestrators and operators poll: /healthz, /readyz (naming each check) and /metrics."""

from __future__ import annotations

import httpx
import respx

from app import __version__
from tests.conftest import Build


async def test_healthz_says_ok_and_the_version(
    app_client: Build, network: respx.MockRouter
) -> None:
    client = await app_client()
    resp = await client.get("/healthz")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok", "version": __version__}
    assert (await client.head("/healthz")).status_code == 200  # load balancers' checks


async def test_readyz_names_every_check_when_ready(
    app_client: Build, network: respx.MockRouter
) -> None:
    client = await app_client()
    resp = await client.get("/readyz")
    assert resp.status_code == 200
    assert resp.json() == {
        "status": "ready",
        "checks": {"configuration": "ok", "signing_keys": "ok", "upstream_circuit": "ok"},
        "identity_providers": {"idp.test": "ok"},
    }


async def test_readyz_names_the_failing_check_and_why(
    app_client: Build, network: respx.MockRouter
) -> None:
    network["jwks"].mock(side_effect=httpx.ConnectError("down"))
    client = await app_client(wait_ready=False)
    for _ in range(100):  # the first fetch fails at once; its reason is then reported
        resp = await client.get("/readyz")
        if "ConnectError" in resp.text:
            break
    assert resp.status_code == 503
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.headers["retry-after"] == "5"
    problem = resp.json()
    assert problem["code"] == "not_ready"
    assert "signing_keys" in problem["detail"]
    assert problem["checks"]["signing_keys"].startswith("not loaded (ConnectError")
    assert (await client.head("/readyz")).status_code == 503


async def test_metrics_are_prometheus_text(app_client: Build, network: respx.MockRouter) -> None:
    client = await app_client()
    resp = await client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    assert "broker_upstream_circuit_state 0.0" in resp.text


async def test_metrics_say_whether_this_process_is_ready(
    app_client: Build, network: respx.MockRouter
) -> None:
    # Scraped but not ready is not serving: the TokenBrokerDown alert reads broker_ready.
    client = await app_client()
    assert "\nbroker_ready 1.0" in (await client.get("/metrics")).text
    network["jwks"].mock(side_effect=httpx.ConnectError("down"))
    unready = await app_client(wait_ready=False)
    assert "\nbroker_ready 0.0" in (await unready.get("/metrics")).text
