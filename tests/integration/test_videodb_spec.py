"""Every call the broker makes is one VideoDB's published OpenAPI accepts: the broker talks
to VideoDB's stand-in through Prism validating both ways (tests/fakes/prism.py)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from app.sandbox.stand_in_videodb import StandInVideoDB
from harness.broker_process import BrokerProcess
from harness.servers import ThreadedServer
from tests.fakes.identity_provider import FakeIdentityProvider
from tests.fakes.prism import PrismProxy
from tests.integration.conftest import API_KEY, AUDIENCE, TOKEN_PATH, broker_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def prism() -> Iterator[PrismProxy]:
    stand_in = ThreadedServer(StandInVideoDB(API_KEY)).start()
    proxy = PrismProxy(stand_in.url).wait_ready()
    yield proxy
    proxy.stop()
    stand_in.stop()


def test_prism_refuses_what_the_spec_refuses(prism: PrismProxy) -> None:
    """The control: Prism does validate (a session without its end user, a call without the
    key), so the broker's calls passing through it below mean something."""
    path = "/collection/default/capture/session"
    no_user = httpx.post(prism.url + path, json={}, headers={"x-access-token": API_KEY})
    assert no_user.status_code == 422
    no_key = httpx.post(prism.url + path, json={"end_user_id": "ada"})
    assert no_key.status_code in (401, 422)


def test_every_call_the_broker_makes_is_one_videodbs_spec_accepts(
    prism: PrismProxy, idp: FakeIdentityProvider
) -> None:
    settings = broker_settings(
        idp,
        prism.url,
        BROKER_CAPTURE_SESSIONS="on",
        BROKER_CAPTURE_CALLBACK_URL="https://partner.example.com/hooks/1",
        BROKER_UPSTREAM_TIMEOUT="10",
    )
    broker = BrokerProcess(settings).wait_ready()
    try:
        bearer = {"Authorization": f"Bearer {idp.issuers[-1].mint('ada', AUDIENCE)}"}
        token = httpx.post(broker.url + TOKEN_PATH, json={"expires_in": 600}, headers=bearer)
        assert token.status_code == 200, token.text
        created = httpx.post(
            broker.url + "/v1/capture/sessions",
            json={"metadata": {"app": "spec"}, "ws_connection_id": "ws-1", "expires_in": 900},
            headers=bearer,
            timeout=15,
        )
        assert created.status_code == 201, created.text
        read = httpx.get(broker.url + created.headers["location"], headers=bearer, timeout=15)
        assert read.status_code == 200, read.text
        assert read.json()["metadata"] == {"app": "spec"}
    finally:
        assert broker.terminate() == 0
    assert "violation" not in prism.output().lower()
