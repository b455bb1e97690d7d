"""Tracing from outside (#18): the broker as a process exporting OTLP/HTTP to a receiver on
loopback. What reaches it, what never does, and what a collector's trouble costs requests."""

from __future__ import annotations

import json
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.sandbox.stand_in_videodb import StandInVideoDB
from harness.broker_process import REPO, BrokerProcess, clean_env, free_port
from harness.otlp_receiver import OtlpReceiver
from harness.servers import ThreadedServer
from harness.waiting import wait_for
from tests.fakes.broken_http import BrokenHTTPServer
from tests.fakes.identity_provider import FakeIdentityProvider
from tests.fakes.redis_server import RedisServer
from tests.integration.conftest import (
    API_KEY,
    AUDIENCE,
    JWT,
    SESSION_TOKEN,
    TOKEN_PATH,
    broker_settings,
)

pytestmark = pytest.mark.integration

TRACE_HEADERS = ("traceparent", "tracestate", "baggage")


@pytest.fixture
def receiver() -> Iterator[tuple[OtlpReceiver, ThreadedServer]]:
    fake = OtlpReceiver()
    server = ThreadedServer(fake).start()
    yield fake, server
    server.stop()


def _otel(endpoint: str, **extra: str) -> dict[str, str]:
    return {
        "BROKER_OTEL": "on",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # ms: the test waits less for each batch
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2",
        **extra,
    }


def _post(broker: BrokerProcess, token: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
    return httpx.post(broker.url + kwargs.pop("path", TOKEN_PATH), headers=headers, **kwargs)


def _children(spans: list[dict[str, Any]], parent: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in spans if s["parent_id"] == parent["span_id"]]


def test_a_token_request_yields_a_trace_of_where_its_time_went_and_no_secret(
    idp: FakeIdentityProvider,
    videodb_server: tuple[StandInVideoDB, ThreadedServer],
    receiver: tuple[OtlpReceiver, ThreadedServer],
    redis_server: RedisServer,
) -> None:
    fake, server = videodb_server
    fake.reset()
    collected, collector = receiver
    user = "trace-user-" + secrets.token_hex(6)  # a raw user id: must never be exported
    settings = broker_settings(
        idp,
        server.url,
        BROKER_REDIS_URL=redis_server.url,
        BROKER_CAPTURE_SESSIONS="on",
        OTEL_SERVICE_NAME="broker-under-test",
        **_otel(collector.url),
    )
    broker = BrokerProcess(settings).wait_ready()
    try:
        jwt = idp.issuers[0].mint(user, AUDIENCE)
        minted = _post(broker, jwt)
        assert minted.status_code == 200
        assert _post(broker, jwt).status_code == 200  # from the cache
        refused = _post(broker, jwt + "x")
        assert refused.status_code == 401
        assert httpx.get(broker.url + "/readyz").status_code == 200  # a probe: no trace
        created = _post(broker, jwt, path="/v1/capture/sessions", json={})
        assert created.status_code == 201, created.text
        request_id = minted.headers["x-request-id"]
        wait_for(
            lambda: any(
                s["attributes"].get("broker.request_id") == created.headers["x-request-id"]
                for s in collected.spans()
            ),
            "span of the last request",
        )
    finally:
        assert broker.terminate() == 0
    spans = collected.spans()

    (request,) = [s for s in spans if s["attributes"].get("broker.request_id") == request_id]
    assert request["name"] == "POST /v1/capture/session/token"
    assert request["attributes"]["http.route"] == "/v1/capture/session/token"
    assert request["attributes"]["http.response.status_code"] == 200
    assert request["resource"]["service.name"] == "broker-under-test"
    in_trace = [s for s in spans if s["trace_id"] == request["trace_id"]]
    children = {s["name"]: s for s in _children(in_trace, request)}
    assert {"broker.authenticate", "broker.token"} <= set(children)
    assert children["broker.authenticate"]["attributes"]["broker.identity.outcome"] == "ok"
    assert children["broker.authenticate"]["attributes"]["broker.identity.provider"] == "127.0.0.1"
    token = children["broker.token"]
    assert token["attributes"]["broker.token.source"] == "upstream"
    below_token = {s["name"]: s for s in _children(in_trace, token)}
    attempt = below_token["videodb token"]
    assert attempt["attributes"]["broker.retry.attempt"] == 1
    assert attempt["attributes"]["broker.videodb.outcome"] == "ok"
    assert attempt["attributes"]["broker.circuit.state"] == "closed"
    assert attempt["attributes"]["http.response.status_code"] == 200
    assert any(name.startswith("redis ") for name in below_token)  # the shared cache looked at
    for child in in_trace:  # every part of the time lies inside the request's
        if child is not request:
            assert request["start"] <= child["start"] <= child["end"] <= request["end"]

    routes = {s["attributes"].get("http.route") for s in spans}
    assert not routes & {"/healthz", "/readyz", "/metrics"}  # probes and scrapes: no trace
    cached = [s for s in spans if s["name"] == "broker.token" and s is not token]
    assert any(s["attributes"]["broker.token.source"] == "cache" for s in cached)
    (refusal,) = [
        s
        for s in spans
        if s["attributes"].get("broker.request_id") == refused.headers["x-request-id"]
    ]
    assert refusal["attributes"]["broker.problem.code"] == "invalid_token"
    assert any(s["name"] == "broker.capture_session create" for s in spans)
    assert any(s["name"] == "videodb create_capture_session" for s in spans)
    fetch = [s for s in spans if s["name"] == "identity_provider fetch_keys"]
    assert fetch
    assert fetch[0]["attributes"]["broker.keys.outcome"] == "ok"

    exported = collected.everything()
    for secret in (API_KEY, user, redis_server.url, jwt):
        assert secret.encode() not in exported, secret[:12]
    text = exported.decode("latin-1")
    assert not JWT.search(text)
    assert not SESSION_TOKEN.search(text)
    assert all(s["events"] == 0 and s["links"] == 0 for s in spans)
    # third parties never see a trace header
    assert fake.calls
    for call in fake.calls:
        assert not set(TRACE_HEADERS) & {h.lower() for h in call.headers}
    assert idp.request_headers
    for headers in idp.request_headers:
        assert not set(TRACE_HEADERS) & set(headers)


def _traced_request(
    broker: BrokerProcess, collected: OtlpReceiver, jwt: str, traceparent: str
) -> dict[str, Any]:
    resp = _post(broker, jwt, headers={"traceparent": traceparent})
    assert resp.status_code == 200
    request_id = resp.headers["x-request-id"]
    wait_for(
        lambda: any(
            s["attributes"].get("broker.request_id") == request_id for s in collected.spans()
        ),
        "the request's span",
    )
    (span,) = [
        s for s in collected.spans() if s["attributes"].get("broker.request_id") == request_id
    ]
    return span


@pytest.mark.parametrize(("trusted", "continued"), [("127.0.0.1", True), ("10.0.0.0/8", False)])
def test_an_incoming_traceparent_is_honoured_only_from_a_trusted_proxy(
    idp: FakeIdentityProvider,
    videodb_server: tuple[StandInVideoDB, ThreadedServer],
    receiver: tuple[OtlpReceiver, ThreadedServer],
    trusted: str,
    continued: bool,
) -> None:
    _, server = videodb_server
    collected, collector = receiver
    settings = broker_settings(
        idp, server.url, BROKER_TRUSTED_PROXIES=trusted, **_otel(collector.url)
    )
    broker = BrokerProcess(settings).wait_ready()
    caller_trace = secrets.token_hex(16)
    caller_span = secrets.token_hex(8)
    try:
        span = _traced_request(
            broker,
            collected,
            idp.issuers[0].mint("proxied", AUDIENCE),
            f"00-{caller_trace}-{caller_span}-01",
        )
    finally:
        assert broker.terminate() == 0
    assert (span["trace_id"] == caller_trace) is continued
    assert (span["parent_id"] == caller_span) is continued


def test_the_sampler_decides_first_and_a_trusted_proxys_flag_is_honoured(
    idp: FakeIdentityProvider,
    videodb_server: tuple[StandInVideoDB, ThreadedServer],
    receiver: tuple[OtlpReceiver, ThreadedServer],
) -> None:
    """Sampling at 0: a request is traced only when the trusted proxy in front says it is
    sampled; a request the sampler drops yields no span at all, not even a child started
    as a root of its own (authentication, the token, VideoDB's call)."""
    _, server = videodb_server
    collected, collector = receiver
    otel = _otel(collector.url, OTEL_TRACES_SAMPLER="parentbased_traceidratio")
    settings = broker_settings(
        idp, server.url, BROKER_TRUSTED_PROXIES="127.0.0.1", OTEL_TRACES_SAMPLER_ARG="0", **otel
    )
    broker = BrokerProcess(settings).wait_ready()
    jwt = idp.issuers[0].mint("sampling", AUDIENCE)
    try:
        dropped = [_post(broker, jwt, json={"expires_in": 300 + i}) for i in range(5)]
        declined = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-00"
        dropped.append(_post(broker, jwt, headers={"traceparent": declined}))
        assert [r.status_code for r in dropped] == [200] * 6
        kept_trace = secrets.token_hex(16)
        span = _traced_request(broker, collected, jwt, f"00-{kept_trace}-{secrets.token_hex(8)}-01")
    finally:
        assert broker.terminate() == 0
    assert span["trace_id"] == kept_trace
    spans = collected.spans()
    assert {s["trace_id"] for s in spans} == {kept_trace}  # nothing of the dropped requests
    assert len(_children(spans, span)) >= 2  # the sampled one has its children


def test_with_tracing_off_nothing_is_exported_whatever_otel_variables_say(
    idp: FakeIdentityProvider,
    videodb_server: tuple[StandInVideoDB, ThreadedServer],
    receiver: tuple[OtlpReceiver, ThreadedServer],
) -> None:
    _, server = videodb_server
    collected, collector = receiver
    settings = broker_settings(
        idp,
        server.url,
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.url,
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_SERVICE_NAME="must-not-export",
        OTEL_BSP_SCHEDULE_DELAY="100",
        FASTAPI_OTEL_AUTO_CONFIGURE="true",
        OTEL_PYTHON_FASTAPI_EXCLUDED_URLS="",
    )
    broker = BrokerProcess(settings).wait_ready()
    try:
        for _ in range(5):
            assert _post(broker, idp.issuers[0].mint("untraced", AUDIENCE)).status_code == 200
        time.sleep(1.5)  # fifteen batch intervals: anything exported would have arrived
    finally:
        assert broker.terminate() == 0
    assert collected.raw == []


def test_with_tracing_off_no_tracer_exporter_or_thread_of_ours_is_loaded() -> None:
    """Off, the broker loads none of it. Two dependencies import parts themselves: FastAPI
    (0.143+) the no-op API, redis-py 8 `opentelemetry.sdk.metrics` to see whether it is
    installed (it sets nothing up). Neither the trace SDK, the exporter, protobuf, a tracer
    provider nor an export thread is there."""
    probe = """
import sys, httpx, asyncio
from asgi_lifespan import LifespanManager
from app.main import create_app
from app.config import Settings
app = create_app(Settings(_env_file=None, videodb_api_key="sk-probe-0123456789",
                          auth_hs256_secret="s" * 40, auth_audience="probe"))
async def main():
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://probe") as client:
            await client.post("/v1/capture/session/token")
asyncio.run(main())
import threading
from opentelemetry import trace
print(type(trace.get_tracer_provider()).__name__, [t.name for t in threading.enumerate()])
print(sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk.trace",
    "opentelemetry.exporter", "app.observability.otel", "google.protobuf"))))
"""
    env = {
        **clean_env(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9", OTEL_TRACES_EXPORTER="otlp"),
        "PYTHONPATH": str(REPO),
    }
    result = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    provider, modules = result.stdout.strip().splitlines()[-2:]
    assert provider == "ProxyTracerProvider ['MainThread']"
    assert modules == "[]"


@pytest.mark.parametrize("trouble", ["down", "refuse", "slow"])
def test_a_collector_in_trouble_costs_requests_nothing_and_is_logged_once(
    idp: FakeIdentityProvider,
    videodb_server: tuple[StandInVideoDB, ThreadedServer],
    receiver: tuple[OtlpReceiver, ThreadedServer],
    trouble: str,
) -> None:
    _, server = videodb_server
    collected, collector = receiver
    endpoint = f"http://127.0.0.1:{free_port()}" if trouble == "down" else collector.url
    # slow: answers after 5 s, past the exporter's 2 s timeout (OTEL_EXPORTER_OTLP_TIMEOUT)
    collected.fault, collected.delay = (trouble, 5.0) if trouble != "down" else (None, 0.0)
    broker = BrokerProcess(broker_settings(idp, server.url, **_otel(endpoint))).wait_ready()
    try:
        jwt = idp.issuers[0].mint("collector-" + trouble, AUDIENCE)
        statuses = []
        deadline = time.monotonic() + 4  # forty batch intervals, each failing
        while time.monotonic() < deadline:
            statuses.append(_post(broker, jwt).status_code)
            assert httpx.get(broker.url + "/healthz").status_code == 200
        assert set(statuses) == {200}
        failed = broker.wait_for_log("trace_export_failed")
        if trouble != "down":
            collected.fault = None  # the collector is back
            broker.wait_for_log("trace_export_recovered")
            assert _post(broker, jwt).status_code == 200
    finally:
        assert broker.terminate() == 0
    records = broker.log_records()
    failures = [r for r in records if r.get("event") == "trace_export_failed"]
    assert len(failures) == 1, failures  # once per incident, however many batches failed
    assert failed[0]["collector"] == "127.0.0.1"
    assert not [r for r in records if "opentelemetry" in json.dumps(r.get("logger", ""))]
    assert not re.search(r"Traceback", broker.output())


@pytest.mark.parametrize(
    ("timeout", "bound"), [(None, 5.0), ("1", 1.0)], ids=["default_timeout", "one_second"]
)
def test_a_collector_that_never_answers_holds_up_shutdown_no_longer_than_the_flush_bound(
    idp: FakeIdentityProvider,
    videodb_server: tuple[StandInVideoDB, ThreadedServer],
    timeout: str | None,
    bound: float,
) -> None:
    """SIGTERM to exit within the exporter's timeout, 5 s at most: the collector accepts every
    export and never answers, one export is in flight and many batches wait behind it (the
    SDK alone waited a timeout per batch, up to its own 30 s)."""
    _, server = videodb_server
    collector = BrokenHTTPServer("silent", API_KEY).start()
    extra = {"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "1"}  # a batch per span: many queued
    if timeout is not None:
        extra["OTEL_EXPORTER_OTLP_TIMEOUT"] = timeout
    otel = _otel(collector.url, **extra)
    if timeout is None:
        del otel["OTEL_EXPORTER_OTLP_TIMEOUT"]  # the exporter's default, 10 s
    broker = BrokerProcess(broker_settings(idp, server.url, **otel)).wait_ready()
    try:
        jwt = idp.issuers[0].mint("hung-collector", AUDIENCE)
        for _ in range(20):
            assert _post(broker, jwt).status_code == 200
        wait_for(lambda: collector.requests >= 1, "an export in flight")
        started = time.monotonic()
        assert broker.terminate(timeout=60) == 0
        took = time.monotonic() - started
    finally:
        collector.stop()
    # The bound, and room for a busy machine's start of the shutdown; the SDK alone took 30 s.
    assert took < bound + 10, took
    (cut,) = [r for r in broker.log_records() if r.get("event") == "trace_flush_cut_short"]
    assert cut["waited_s"] == bound
    assert cut["collector"] == "127.0.0.1"
    assert not re.search(r"Traceback", broker.output())


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_spans_are_encoded_in_a_child_of_the_broker_that_ends_with_it(
    idp: FakeIdentityProvider,
    videodb_server: tuple[StandInVideoDB, ThreadedServer],
    receiver: tuple[OtlpReceiver, ThreadedServer],
    stop: signal.Signals,
) -> None:
    """The OTLP encoding runs in `python -m app.observability.export_process`, started by the
    broker; whether the broker shuts down or is killed, it leaves no process behind."""
    _, server = videodb_server
    collected, collector = receiver
    broker = BrokerProcess(broker_settings(idp, server.url, **_otel(collector.url))).wait_ready()
    try:
        assert _post(broker, idp.issuers[0].mint("child-user", AUDIENCE)).status_code == 200
        wait_for(lambda: bool(collected.spans()), "exported span")
        (child,) = [
            pid
            for pid in _child_processes(broker.proc.pid)
            if b"app.observability.export_process" in _cmdline(pid)
        ]
        broker.proc.send_signal(stop)
        broker.proc.wait(timeout=35)
    finally:
        broker.terminate()
    wait_for(lambda: not _running(child), "end of the export process")
    assert not re.search(r"Traceback", broker.output())


def _child_processes(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    return [int(c) for t in tasks.iterdir() for c in (t / "children").read_text().split()]


def _cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting for whoever adopted it to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
