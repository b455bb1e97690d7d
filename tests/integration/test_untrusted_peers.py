"""Peers whose TLS certificate nobody vouches for: never sent the key, never believed."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from app.sandbox.stand_in_videodb import StandInVideoDB
from harness.broker_process import BrokerProcess
from harness.servers import ThreadedServer
from tests.fakes.identity_provider import FakeIdentityProvider
from tests.fakes.tls import self_signed_certificate
from tests.integration.conftest import (
    API_KEY,
    AUDIENCE,
    TOKEN_PATH,
    assert_no_secret_in,
    broker_settings,
)

pytestmark = pytest.mark.integration


def test_a_videodb_with_an_untrusted_certificate_never_receives_the_key(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    impostor = StandInVideoDB(api_key=API_KEY)
    server = ThreadedServer(impostor, tls=self_signed_certificate(tmp_path)).start()
    process = BrokerProcess(broker_settings(idp, server.url)).wait_ready()
    try:
        resp = httpx.post(
            process.url + TOKEN_PATH,
            headers={"Authorization": f"Bearer {idp.issuers[-1].mint('u', AUDIENCE)}"},
        )
        assert resp.status_code == 503
        assert resp.json()["code"] == "upstream_unavailable"
        assert impostor.calls == []  # the handshake failed before a byte of the request
        unreachable = [r for r in process.log_records() if r["event"] == "videodb_unreachable"]
        assert unreachable
        assert unreachable[0]["error_type"] == "ConnectError"
    finally:
        assert process.terminate() == 0
        server.stop()
    assert_no_secret_in(process.output())


def test_an_identity_provider_with_an_untrusted_certificate_is_not_believed(
    videodb_server: tuple[StandInVideoDB, ThreadedServer], tmp_path: Path
) -> None:
    _, videodb_srv = videodb_server
    provider = FakeIdentityProvider()
    server = ThreadedServer(provider, tls=self_signed_certificate(tmp_path))
    provider.issuer_url = server.url
    issuer = provider.rotate()
    server.start()
    process = BrokerProcess(broker_settings(provider, videodb_srv.url)).wait_healthy()
    try:
        time.sleep(1.5)  # the first fetch and a retry or two (backoff from 0.5 s)
        ready = httpx.get(process.url + "/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["signing_keys"].startswith("not loaded")
        resp = httpx.post(
            process.url + TOKEN_PATH,
            headers={"Authorization": f"Bearer {issuer.mint('u', AUDIENCE)}"},
        )
        assert resp.status_code == 401  # its keys were never taken: fail closed
        assert provider.jwks_fetches == 0  # no JWKS request got past the handshake
    finally:
        assert process.terminate() == 0
        server.stop()


def test_peers_behind_a_private_ca_are_trusted_through_ssl_cert_file(tmp_path: Path) -> None:
    """What an operator does for an identity provider or VideoDB route behind their own CA:
    mount the CA's bundle and point SSL_CERT_FILE at it (docs/operations.md)."""
    certificate = self_signed_certificate(tmp_path)
    videodb = StandInVideoDB(api_key=API_KEY)
    videodb_srv = ThreadedServer(videodb, tls=certificate).start()
    provider = FakeIdentityProvider()
    idp_srv = ThreadedServer(provider, tls=certificate)
    provider.issuer_url = idp_srv.url
    issuer = provider.rotate()
    idp_srv.start()
    settings = broker_settings(provider, videodb_srv.url, SSL_CERT_FILE=str(certificate[0]))
    process = BrokerProcess(settings).wait_ready()  # the keys came over verified TLS
    try:
        resp = httpx.post(
            process.url + TOKEN_PATH,
            headers={"Authorization": f"Bearer {issuer.mint('ada', AUDIENCE)}"},
        )
        assert resp.status_code == 200
        (call,) = videodb.calls
        assert call.headers["x-access-token"] == API_KEY
    finally:
        assert process.terminate() == 0
        videodb_srv.stop()
        idp_srv.stop()
    assert_no_secret_in(process.output())
