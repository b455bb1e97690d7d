"""The broker as users meet it: a process on a port, real HTTP to a real JWKS and VideoDB."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.sandbox.dev_issuer import DevIssuer
from app.sandbox.stand_in_videodb import StandInVideoDB
from harness.broker_process import BrokerProcess
from harness.servers import ThreadedServer
from tests.fakes.identity_provider import FakeIdentityProvider
from tests.forge import attacker_rsa_pem, claims_for, sign
from tests.integration.conftest import (
    API_KEY,
    APP_ORIGIN,
    AUDIENCE,
    TOKEN_PATH,
    assert_no_secret_in,
    broker_settings,
)

pytestmark = pytest.mark.integration


def _bearer(idp: FakeIdentityProvider, user: str | None = None) -> dict[str, str]:
    """A bearer for a fresh user, so that no cached token hides what VideoDB does."""
    token = idp.issuers[-1].mint(user or f"user-{uuid.uuid4().hex[:10]}", AUDIENCE)
    return {"Authorization": f"Bearer {token}"}


def test_desktop_app_gets_a_token_over_http(
    broker: BrokerProcess, idp: FakeIdentityProvider, videodb: StandInVideoDB
) -> None:
    resp = httpx.post(
        broker.url + TOKEN_PATH, json={"expires_in": 600}, headers=_bearer(idp, "user-1")
    )
    assert resp.status_code == 200
    body = resp.json()
    assert body["token"].startswith("st-")
    assert 598 <= body["expires_in"] <= 600
    assert resp.headers["cache-control"] == "no-store"
    assert "access-control-allow-origin" not in resp.headers  # no Origin, no CORS
    (call,) = videodb.calls
    assert call.body == {"user_id": "user-1", "expires_in": 600}
    assert call.headers["x-access-token"] == API_KEY
    assert call.headers["x-videodb-client"].startswith("videodb-token-broker/")
    assert call.headers["content-type"] == "application/json"


def test_log_lines_carry_request_ids_and_only_fingerprints(
    broker: BrokerProcess, idp: FakeIdentityProvider, videodb: StandInVideoDB
) -> None:
    resp = httpx.post(broker.url + TOKEN_PATH, headers=_bearer(idp, "log-user"))
    request_id = resp.headers["x-request-id"]
    time.sleep(0.2)
    mine = [r for r in broker.log_records() if r.get("request_id") == request_id]
    # One line for the request: the audit line, carrying the access fields too.
    (issued,) = mine
    assert issued["event"] == "token_issued"
    assert issued["logger"] == "app.audit"
    assert (issued["method"], issued["path"], issued["status"]) == ("POST", TOKEN_PATH, 200)
    assert issued["duration_ms"] >= 0
    assert issued["user_id"] == "log-user"
    assert issued["token"].startswith("sha256:")
    assert resp.json()["token"] not in broker.output()


def test_browser_preflight_and_cors_for_allowed_origin_only(broker: BrokerProcess) -> None:
    preflight = httpx.options(
        broker.url + TOKEN_PATH,
        headers={
            "Origin": APP_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    foreign = httpx.options(
        broker.url + TOKEN_PATH,
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert foreign.status_code == 403
    assert foreign.headers["content-type"] == "application/problem+json"
    assert foreign.json()["code"] == "origin_not_allowed"
    assert "access-control-allow-origin" not in foreign.headers


def test_cors_headers_on_an_allowed_simple_response(
    broker: BrokerProcess, idp: FakeIdentityProvider, videodb: StandInVideoDB
) -> None:
    resp = httpx.post(broker.url + TOKEN_PATH, headers={**_bearer(idp), "Origin": APP_ORIGIN})
    assert resp.status_code == 200
    assert resp.headers["access-control-allow-origin"] == APP_ORIGIN
    evil = httpx.post(
        broker.url + TOKEN_PATH, headers={**_bearer(idp), "Origin": "https://evil.example"}
    )
    assert "access-control-allow-origin" not in evil.headers


def test_jwt_attacks_over_http_never_reach_videodb_or_the_attacker(
    broker: BrokerProcess, idp: FakeIdentityProvider, videodb: StandInVideoDB
) -> None:
    attacker_idp = FakeIdentityProvider()
    attacker_server = ThreadedServer(attacker_idp)
    attacker_idp.issuer_url = attacker_server.url
    evil = attacker_idp.rotate()
    attacker_server.start()
    try:
        claims = claims_for(AUDIENCE, idp.issuer_url)
        genuine_kid = idp.issuers[0].kid
        tokens = {
            "jku": sign(claims, evil.key.pem, kid=evil.kid, jku=attacker_server.url + "/jwks.json"),
            "x5u": sign(claims, evil.key.pem, kid=evil.kid, x5u=attacker_server.url + "/cert"),
            "forged_known_kid": sign(claims, attacker_rsa_pem(), kid=genuine_kid),
            "other_issuer": evil.mint("victim", AUDIENCE),
            "expired": idp.issuers[0].mint("victim", AUDIENCE, lifetime=-600),
            "wrong_aud": idp.issuers[0].mint("victim", "not-us"),
        }
        for name, token in tokens.items():
            resp = httpx.post(broker.url + TOKEN_PATH, headers={"Authorization": f"Bearer {token}"})
            assert resp.status_code == 401, name
            assert resp.json()["code"] == "invalid_token", name
            assert resp.headers["www-authenticate"].startswith("Bearer"), name
        assert videodb.calls == []
        assert attacker_idp.jwks_fetches == 0
    finally:
        attacker_server.stop()


@pytest.mark.parametrize(
    ("fault", "retry_after", "status", "code"),
    [
        ("500", None, 503, "upstream_unavailable"),
        ("503", None, 503, "upstream_unavailable"),
        ("429", None, 503, "upstream_unavailable"),
        ("429", "3", 503, "upstream_unavailable"),
        ("401", None, 502, "upstream_error"),
        ("malformed", None, 502, "upstream_error"),
        ("success_false", None, 502, "upstream_error"),
    ],
)
def test_videodb_failures_become_contract_problems(
    broker: BrokerProcess,
    idp: FakeIdentityProvider,
    videodb: StandInVideoDB,
    fault: str,
    retry_after: str | None,
    status: int,
    code: str,
) -> None:
    videodb.fault, videodb.retry_after = fault, retry_after
    resp = httpx.post(broker.url + TOKEN_PATH, headers=_bearer(idp))
    assert resp.status_code == status
    assert resp.json()["code"] == code
    assert resp.headers["content-type"] == "application/problem+json"
    assert_no_secret_in(resp.text)
    assert "bad request for key" not in resp.text  # VideoDB's raw text never passes through
    if status == 503:
        assert resp.headers["retry-after"] == (retry_after or "5")


def test_slow_videodb_times_out_within_the_deadline(
    broker: BrokerProcess, idp: FakeIdentityProvider, videodb: StandInVideoDB
) -> None:
    videodb.delay = 3.0
    started = time.monotonic()
    resp = httpx.post(broker.url + TOKEN_PATH, headers=_bearer(idp), timeout=10)
    elapsed = time.monotonic() - started
    assert resp.status_code == 504
    assert resp.json()["code"] == "upstream_timeout"
    assert elapsed < 2.0  # BROKER_UPSTREAM_TIMEOUT=1


def test_videodb_down_then_recovering(
    idp: FakeIdentityProvider, videodb_server: tuple[StandInVideoDB, ThreadedServer]
) -> None:
    fake, _ = videodb_server
    fake.reset()
    outage = ThreadedServer(fake)
    port = outage.port
    outage.stop()  # nothing listens: connection refused
    process = BrokerProcess(broker_settings(idp, f"http://127.0.0.1:{port}"))
    try:
        process.wait_ready()
        down = httpx.post(process.url + TOKEN_PATH, headers=_bearer(idp))
        assert down.status_code == 503
        assert down.json()["code"] == "upstream_unavailable"
        assert int(down.headers["retry-after"]) >= 1
        back = ThreadedServer(fake, port=port).start()
        try:
            up = httpx.post(process.url + TOKEN_PATH, headers=_bearer(idp))
            assert up.status_code == 200
        finally:
            back.stop()
    finally:
        assert process.terminate() == 0
    assert_no_secret_in(process.output())


@pytest.mark.parametrize("fault", ["down", "odd_types", "nested", "bad_jwks_uri"])
def test_identity_provider_down_at_start_then_up(
    videodb_server: tuple[StandInVideoDB, ThreadedServer], fault: str
) -> None:
    """Whatever is wrong with the provider's answers, the broker fails closed (401, never a
    500), says why in /readyz and its log, retries within seconds, recovers by itself once
    the provider does, and shuts down cleanly."""
    _, videodb_srv = videodb_server
    provider = FakeIdentityProvider(fault=fault)
    server = ThreadedServer(provider)
    provider.issuer_url = server.url
    provider.rotate()
    server.start()
    settings = broker_settings(provider, videodb_srv.url)
    if fault == "bad_jwks_uri":
        del settings["BROKER_AUTH_JWKS_URL"]  # the keys are found by discovery
    process = BrokerProcess(settings).wait_healthy()
    try:
        not_ready = httpx.get(process.url + "/readyz")
        assert not_ready.status_code == 503
        assert not_ready.json()["checks"]["signing_keys"].startswith("not loaded")
        assert "signing_keys" in not_ready.json()["detail"]
        refused = httpx.post(process.url + TOKEN_PATH, headers=_bearer(provider))
        assert refused.status_code == 401  # fail closed: no keys, no tokens
        failures = process.wait_for_log("jwks_refresh_failed", count=2, timeout=15)
        assert all(record["error"] for record in failures)  # each says why
        provider.fault = None
        process.wait_ready(timeout=15)
        ok = httpx.post(process.url + TOKEN_PATH, headers=_bearer(provider))
        assert ok.status_code == 200
    finally:
        assert process.terminate() == 0
        server.stop()
    output = process.output()
    assert "Traceback" not in output
    assert "shutdown failed" not in output.lower()


@pytest.fixture
def own_idp(
    videodb_server: tuple[StandInVideoDB, ThreadedServer],
) -> Iterator[tuple[FakeIdentityProvider, DevIssuer, BrokerProcess]]:
    """An identity provider of the test's own with one key, and a broker ready on it."""
    _, videodb_srv = videodb_server
    provider = FakeIdentityProvider()
    server = ThreadedServer(provider)
    provider.issuer_url = server.url
    original = provider.rotate()
    server.start()
    process = BrokerProcess(broker_settings(provider, videodb_srv.url)).wait_ready()
    yield provider, original, process
    provider.fault = None
    assert process.terminate() == 0
    server.stop()


def test_keys_held_keep_working_while_the_provider_is_down_and_rotation_is_picked_up(
    own_idp: tuple[FakeIdentityProvider, DevIssuer, BrokerProcess],
) -> None:
    provider, original, process = own_idp
    provider.fault = "down"
    resp = httpx.post(
        process.url + TOKEN_PATH,
        headers={"Authorization": f"Bearer {original.mint('u', AUDIENCE)}"},
    )
    assert resp.status_code == 200
    assert httpx.get(process.url + "/readyz").status_code == 200
    provider.fault = None
    fetches = provider.jwks_fetches
    rotated = provider.rotate()
    for _ in range(20):  # a burst with the new kid: exactly one refetch
        resp = httpx.post(
            process.url + TOKEN_PATH,
            headers={"Authorization": f"Bearer {rotated.mint('u', AUDIENCE)}"},
        )
        assert resp.status_code == 200
    assert provider.jwks_fetches - fetches == 1


def test_a_trickling_provider_delays_a_new_kid_by_the_bound_only(
    own_idp: tuple[FakeIdentityProvider, DevIssuer, BrokerProcess],
) -> None:
    provider, original, process = own_idp
    provider.fault = "trickle"  # every byte quick, the whole JWKS minutes away
    rotated = provider.rotate()
    started = time.monotonic()
    refused = httpx.post(
        process.url + TOKEN_PATH,
        headers={"Authorization": f"Bearer {rotated.mint('new-kid-user', AUDIENCE)}"},
        timeout=30,
    )
    assert refused.status_code == 401  # fail closed, after the bounded wait (2 s)
    assert time.monotonic() - started < 3.0
    started = time.monotonic()
    known = httpx.post(
        process.url + TOKEN_PATH,
        headers={"Authorization": f"Bearer {original.mint('known-kid-user', AUDIENCE)}"},
    )
    assert known.status_code == 200  # not queued behind the refetch
    assert time.monotonic() - started < 1.0
    deadline = time.monotonic() + 10
    while "jwks_refresh_failed" not in process.output() and time.monotonic() < deadline:
        time.sleep(0.1)
    failure = next(r for r in process.log_records() if r.get("event") == "jwks_refresh_failed")
    assert "within 5 s" in failure["error"]  # the whole fetch has a deadline


def test_framework_errors_are_problems_too(broker: BrokerProcess) -> None:
    missing = httpx.get(broker.url + "/nope")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["code"] == "not_found"
    wrong_method = httpx.get(broker.url + TOKEN_PATH)
    assert wrong_method.status_code == 405
    assert wrong_method.json()["code"] == "method_not_allowed"
    assert wrong_method.json()["request_id"] == wrong_method.headers["x-request-id"]


def test_health_and_readiness(broker: BrokerProcess) -> None:
    health = httpx.get(broker.url + "/healthz")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert health.json()["version"]
    ready = httpx.get(broker.url + "/readyz")
    assert ready.json()["checks"] == {
        "configuration": "ok",
        "signing_keys": "ok",
        "upstream_circuit": "ok",
    }


def test_health_and_readiness_answer_head_probes(broker: BrokerProcess) -> None:
    for path in ("/healthz", "/readyz"):
        probe = httpx.head(broker.url + path)
        assert probe.status_code == 200, path
        assert probe.content == b""
        assert probe.headers["content-type"] == "application/json"
        assert int(probe.headers["content-length"]) > 0  # the length GET's body would have


def test_hsts_only_for_https_seen_through_a_trusted_proxy(broker: BrokerProcess) -> None:
    via_proxy = httpx.get(broker.url + "/healthz", headers={"X-Forwarded-Proto": "https"})
    assert via_proxy.headers["strict-transport-security"].startswith("max-age=")
    plain = httpx.get(broker.url + "/healthz")
    assert "strict-transport-security" not in plain.headers


def test_opentelemetry_settings_in_the_environment_export_nothing(
    idp: FakeIdentityProvider, videodb_server: tuple[StandInVideoDB, ThreadedServer]
) -> None:
    received: list[str] = []

    async def collector(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        received.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    otlp = ThreadedServer(collector).start()
    _, server = videodb_server
    # What an OpenTelemetry operator injects into every pod of a namespace
    settings = broker_settings(
        idp,
        server.url,
        FASTAPI_OTEL_AUTO_CONFIGURE="true",
        OTEL_EXPORTER_OTLP_ENDPOINT=otlp.url,
        OTEL_SERVICE_NAME="token-broker",
    )
    process = BrokerProcess(settings).wait_ready()
    try:
        resp = httpx.post(process.url + TOKEN_PATH, headers=_bearer(idp))
        assert resp.status_code == 200
    finally:
        assert process.terminate() == 0
        otlp.stop()
    assert received == []  # the logs and /metrics are the broker's telemetry, nothing else
    noise = [r for r in process.log_records() if "telemetry" in str(r.get("event", "")).lower()]
    assert noise == []  # FastAPI does not try, fail and warn at every start either
