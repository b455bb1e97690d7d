"""Real processes and real HTTP: a JWKS server, a stand-in VideoDB, the broker on a port."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from app.sandbox.stand_in_videodb import StandInVideoDB
from app.web.token_endpoint import TOKEN_PATH as TOKEN_PATH  # the contract's path, re-exported
from harness.broker_process import BrokerProcess
from harness.servers import ThreadedServer
from tests.fakes.identity_provider import FakeIdentityProvider

API_KEY = "sk-integration-0123456789abcdef"
AUDIENCE = "integration-tests"
APP_ORIGIN = "https://app.example.com"

SESSION_TOKEN = re.compile(r"st-[A-Za-z0-9_\-]{8,}")
JWT = re.compile(r"eyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]+")


def assert_no_secret_in(text: str) -> None:
    """No VideoDB key, session token or JWT in this text."""
    assert API_KEY not in text
    assert not SESSION_TOKEN.search(text), SESSION_TOKEN.search(text)
    assert not JWT.search(text), JWT.search(text)


def serving_identity_provider() -> Iterator[FakeIdentityProvider]:
    """A stand-in identity provider with one key, served over HTTP until the generator ends."""
    provider = FakeIdentityProvider()
    server = ThreadedServer(provider)
    provider.issuer_url = server.url
    provider.rotate()
    server.start()
    yield provider
    server.stop()


@pytest.fixture(scope="module")
def idp() -> Iterator[FakeIdentityProvider]:
    """A real JWKS server over HTTP."""
    yield from serving_identity_provider()


@pytest.fixture(scope="module")
def videodb_server() -> Iterator[tuple[StandInVideoDB, ThreadedServer]]:
    """A stand-in VideoDB over HTTP."""
    fake = StandInVideoDB(api_key=API_KEY)
    server = ThreadedServer(fake).start()
    yield fake, server
    server.stop()


@pytest.fixture
def videodb(videodb_server: tuple[StandInVideoDB, ThreadedServer]) -> StandInVideoDB:
    """The stand-in, healthy and with no calls recorded."""
    fake, _ = videodb_server
    fake.reset()
    return fake


def broker_settings(idp: FakeIdentityProvider, videodb_url: str, **extra: str) -> dict[str, str]:
    """Environment for a broker wired to the fakes."""
    return {
        "VIDEO_DB_API_KEY": API_KEY,
        "VIDEO_DB_API": videodb_url,
        "BROKER_AUTH_JWKS_URL": idp.issuer_url + "/jwks.json",
        "BROKER_AUTH_ISSUER": idp.issuer_url,
        "BROKER_AUTH_AUDIENCE": AUDIENCE,
        "BROKER_CORS_ORIGINS": APP_ORIGIN,
        "BROKER_UPSTREAM_TIMEOUT": "1",
        "BROKER_TRUSTED_PROXIES": "127.0.0.1",
        "BROKER_CIRCUIT_FAILURE_THRESHOLD": "1000",  # the breaker has its own tests
        "BROKER_RATE_LIMIT": "1000/minute",
        **extra,
    }


@pytest.fixture(scope="module")
def broker(
    idp: FakeIdentityProvider, videodb_server: tuple[StandInVideoDB, ThreadedServer]
) -> Iterator[BrokerProcess]:
    """One broker process for the module; on teardown its logs must hold no secret."""
    _, server = videodb_server
    process = BrokerProcess(broker_settings(idp, server.url)).wait_healthy().wait_ready()
    yield process
    assert process.terminate() == 0
    records = process.log_records()  # every line parses as JSON
    assert records
    assert_no_secret_in(process.output())
