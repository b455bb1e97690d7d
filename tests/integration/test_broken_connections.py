"""VideoDB failing below HTTP: broken connections and answers end as the contract says, in time."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from harness.broker_process import BrokerProcess
from tests.fakes.broken_http import BrokenHTTPServer
from tests.fakes.identity_provider import FakeIdentityProvider
from tests.integration.conftest import (
    API_KEY,
    AUDIENCE,
    TOKEN_PATH,
    assert_no_secret_in,
    broker_settings,
)

pytestmark = pytest.mark.integration

UPSTREAM_TIMEOUT = 1.0  # BROKER_UPSTREAM_TIMEOUT in broker_settings


@pytest.fixture(scope="module")
def broken() -> Iterator[BrokenHTTPServer]:
    """The misbehaving VideoDB; each test sets its mode."""
    server = BrokenHTTPServer("close", API_KEY).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def broker_on_broken(
    idp: FakeIdentityProvider, broken: BrokenHTTPServer
) -> Iterator[BrokerProcess]:
    """A broker whose VideoDB is the broken server; its logs must hold no secret."""
    process = BrokerProcess(broker_settings(idp, broken.url)).wait_ready()
    yield process
    assert process.terminate() == 0
    output = process.output()
    assert_no_secret_in(output)
    assert "cut-short" not in output  # nothing VideoDB sent is copied into a log line


@pytest.mark.parametrize(
    ("mode", "status", "code"),
    [
        ("close", 503, "upstream_unavailable"),
        ("reset", 503, "upstream_unavailable"),
        ("truncated", 503, "upstream_unavailable"),
        ("not_http", 503, "upstream_unavailable"),
        ("huge_header", 503, "upstream_unavailable"),
        ("trickle", 504, "upstream_timeout"),
        ("stall", 504, "upstream_timeout"),
    ],
)
def test_broken_answers_become_contract_problems_within_the_deadline(
    broker_on_broken: BrokerProcess,
    idp: FakeIdentityProvider,
    broken: BrokenHTTPServer,
    mode: str,
    status: int,
    code: str,
) -> None:
    broken.mode, broken.requests = mode, 0
    bearer = idp.issuers[-1].mint(f"user-{uuid.uuid4().hex[:10]}", AUDIENCE)
    started = time.monotonic()
    resp = httpx.post(
        broker_on_broken.url + TOKEN_PATH,
        headers={"Authorization": f"Bearer {bearer}"},
        timeout=10,
    )
    elapsed = time.monotonic() - started
    assert resp.status_code == status, resp.text
    assert resp.json()["code"] == code
    assert resp.headers["content-type"] == "application/problem+json"
    if status == 503:
        assert int(resp.headers["retry-after"]) >= 1
    assert elapsed < UPSTREAM_TIMEOUT + 0.5  # the whole exchange, retries included
    assert 1 <= broken.requests <= 3  # retried, but boundedly
    assert "cut-short" not in resp.text
    assert_no_secret_in(resp.text)
