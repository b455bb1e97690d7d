"""The container's health check (`python -m app.healthcheck`) against real local servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app import healthcheck
from harness.broker_process import free_port
from harness.servers import ThreadedServer
from tests.fakes.tls import self_signed_certificate


async def _ready(_: Request) -> JSONResponse:
    return JSONResponse({"status": "ready"})


async def _not_ready(_: Request) -> JSONResponse:
    return JSONResponse({"status": 503}, 503)


ROUTES = [Route("/healthz", _ready), Route("/readyz", _not_ready)]


@pytest.fixture
def plain() -> Iterator[ThreadedServer]:
    server = ThreadedServer(Starlette(routes=ROUTES)).start()
    yield server
    server.stop()


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[ThreadedServer]:
    server = ThreadedServer(Starlette(routes=ROUTES), tls=self_signed_certificate(tmp_path))
    yield server.start()
    server.stop()


def test_plain_http_answers_by_status(
    plain: ThreadedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PORT", str(plain.port))
    monkeypatch.delenv("BROKER_TLS_CERT_FILE", raising=False)
    assert healthcheck.main([]) == 0  # /healthz by default
    assert healthcheck.main(["/readyz"]) == 1  # 503
    assert healthcheck.main(["/nowhere"]) == 1  # 404


def test_https_when_the_broker_terminates_tls(
    tls: ThreadedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PORT", str(tls.port))
    monkeypatch.setenv("BROKER_TLS_CERT_FILE", "/run/secrets/tls.crt")
    assert healthcheck.main(["/healthz"]) == 0  # a self-signed certificate: not verified
    monkeypatch.delenv("BROKER_TLS_CERT_FILE")
    assert healthcheck.main(["/healthz"]) == 1  # plain HTTP to a TLS port


def test_nothing_listening_is_unhealthy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", str(free_port()))
    assert healthcheck.main(["/healthz"]) == 1
