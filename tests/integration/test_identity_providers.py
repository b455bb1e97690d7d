"""Several identity providers, tried from outside: the broker as a process, providers over
HTTP (two stand-ins, one that is down, and panva's oidc-provider), tokens from each."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from app.sandbox.stand_in_videodb import StandInVideoDB
from harness.broker_process import REPO, BrokerProcess, clean_env, free_port
from harness.servers import ThreadedServer
from tests.fakes.identity_provider import FakeIdentityProvider
from tests.fakes.oidc_provider import OidcProvider
from tests.integration.conftest import (
    API_KEY,
    TOKEN_PATH,
    assert_no_secret_in,
    serving_identity_provider,
)

pytestmark = pytest.mark.integration

AUDIENCE = "https://broker.integration.test"


@pytest.fixture(scope="module")
def second_idp() -> Iterator[FakeIdentityProvider]:
    """Another provider, with a key and an issuer of its own."""
    yield from serving_identity_provider()


def _several(*providers: dict[str, object], videodb_url: str) -> dict[str, str]:
    settings = {
        "VIDEO_DB_API_KEY": API_KEY,
        "VIDEO_DB_API": videodb_url,
        "BROKER_AUTH_ISSUERS": json.dumps(list(providers)),
        "BROKER_UPSTREAM_TIMEOUT": "2",
        "BROKER_RATE_LIMIT": "1000/minute",
    }
    return settings


def _entry(idp: FakeIdentityProvider, name: str) -> dict[str, object]:
    return {
        "name": name,
        "issuer": idp.issuer_url,
        "audience": AUDIENCE,
        "user_id_prefix": f"{name}:",
    }


def _down() -> dict[str, object]:
    """A provider whose host refuses connections."""
    nowhere = f"http://127.0.0.1:{free_port()}"
    return {"name": "down", "issuer": nowhere, "audience": AUDIENCE, "user_id_prefix": "down:"}


def _post(broker: BrokerProcess, token: str) -> httpx.Response:
    return httpx.post(broker.url + TOKEN_PATH, headers={"Authorization": f"Bearer {token}"})


def test_three_providers_one_down_forged_tokens_crossing(
    idp: FakeIdentityProvider,
    second_idp: FakeIdentityProvider,
    videodb_server: tuple[StandInVideoDB, ThreadedServer],
) -> None:
    fake, server = videodb_server
    fake.reset()
    down = _down()
    nowhere = str(down["issuer"])
    settings = _several(
        _entry(idp, "web"), _entry(second_idp, "desktop"), down, videodb_url=server.url
    )
    broker = BrokerProcess(settings).wait_ready()
    try:
        ready = httpx.get(broker.url + "/readyz").json()
        assert ready["identity_providers"]["web"] == "ok"
        assert ready["identity_providers"]["desktop"] == "ok"
        assert ready["identity_providers"]["down"].startswith("not loaded")

        web_key, desktop_key = idp.issuers[0], second_idp.issuers[0]
        for key in (web_key, desktop_key):
            resp = _post(broker, key.mint("same-sub", AUDIENCE))
            assert resp.status_code == 200, resp.text
        assert [c.body["user_id"] for c in fake.calls] == ["web:same-sub", "desktop:same-sub"]

        # Signed by one provider, claiming another: refused, whatever kid it names.
        forged = web_key.mint("same-sub", AUDIENCE, iss=second_idp.issuer_url)
        assert _post(broker, forged).status_code == 401
        assert _post(broker, web_key.mint("x", AUDIENCE, iss=nowhere)).status_code == 401
        assert (
            _post(broker, web_key.mint("x", AUDIENCE, iss="https://evil.test")).status_code == 401
        )
        assert len(fake.calls) == 2
    finally:
        assert broker.terminate() == 0
    assert_no_secret_in(broker.output())
    lines = broker.log_records()
    refused = [r for r in lines if r.get("event") == "identity_rejected"]
    assert {r["provider"] for r in refused} == {"desktop", "down", "none"}
    fetch_failures = [r for r in lines if r.get("event") == "jwks_refresh_failed"]
    assert fetch_failures
    assert {r["provider"] for r in fetch_failures} == {"down"}


def test_check_reports_each_provider_on_its_own_line(
    idp: FakeIdentityProvider,
    second_idp: FakeIdentityProvider,
    videodb_server: tuple[StandInVideoDB, ThreadedServer],
) -> None:
    _, server = videodb_server

    def check(*providers: dict[str, object]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app.cli", "check", "--live"],
            env={
                **clean_env(**_several(*providers, videodb_url=server.url)),
                "PYTHONPATH": str(REPO),
            },
            capture_output=True,
            text=True,
            timeout=60,
        )

    ok = check(_entry(idp, "web"), _entry(second_idp, "desktop"))
    assert ok.returncode == 0, ok.stdout
    assert "ok   configuration: valid (2 identity providers, BROKER_AUTH_ISSUERS)" in ok.stdout
    assert "ok   signing_keys [web]: 1 key(s) from JWKS at http://127.0.0.1" in ok.stdout
    assert "ok   signing_keys [desktop]: 1 key(s)" in ok.stdout
    failed = check(_entry(idp, "web"), _down())
    assert failed.returncode == 1
    assert "ok   signing_keys [web]" in failed.stdout
    assert "FAIL signing_keys [down]: ConnectError fetching" in failed.stdout


@pytest.fixture(scope="module")
def oidc() -> Iterator[OidcProvider]:
    provider = OidcProvider(AUDIENCE).start()
    yield provider
    provider.stop()


def test_a_real_openid_provider_found_by_discovery(
    oidc: OidcProvider,
    idp: FakeIdentityProvider,
    videodb_server: tuple[StandInVideoDB, ThreadedServer],
) -> None:
    fake, server = videodb_server
    fake.reset()
    panva: dict[str, object] = {
        "name": "panva",
        "issuer": oidc.issuer,
        "audience": AUDIENCE,
        "user_id_prefix": "panva:",
        "required_scopes": ["capture"],
    }
    settings = _several(panva, _entry(idp, "web"), videodb_url=server.url)
    broker = BrokerProcess(settings).wait_ready()
    try:
        resp = _post(broker, oidc.access_token())
        assert resp.status_code == 200, resp.text + broker.output()
        # client credentials: the subject is the client
        assert fake.calls[-1].body["user_id"] == "panva:capture-app"

        other_audience = oidc.access_token(resource="https://other.example")
        refused = _post(broker, other_audience)
        assert refused.status_code == 401
        assert "audience" in refused.json()["detail"]

        before_rotation = oidc.access_token()
        assert _post(broker, before_rotation).status_code == 200  # known, and cached as verified
        oidc.rotate()
        after_rotation = oidc.access_token()
        assert _post(broker, after_rotation).status_code == 200  # the new kid: keys refetched
        gone = _post(broker, before_rotation)  # its key is gone from the provider's JWKS
        assert gone.status_code == 401, gone.text
    finally:
        assert broker.terminate() == 0
    assert_no_secret_in(broker.output())
