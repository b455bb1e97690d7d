"""Shared fixtures: a development issuer, settings, and the app over ASGI with its lifespan."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Protocol

import httpx
import pytest
import respx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from pydantic import SecretStr

from app.config import Settings
from app.config.redis import RedisTarget
from app.infra.redis_state import SharedState
from app.main import create_app
from app.sandbox.dev_issuer import DevIssuer
from app.sandbox.stand_in_videodb import token_answer
from app.videodb.client import UPSTREAM_TOKEN_PATH
from app.web.token_endpoint import TOKEN_PATH as TOKEN_PATH  # the contract's path, re-exported
from tests.fakes.redis_server import RedisServer
from tests.fakes.redis_topologies import ClusterOfThree, SentinelGroup

API_KEY = "sk-test-0123456789abcdef"
VIDEODB = "https://videodb.test"
ISSUER = "https://idp.test"
JWKS_URL = ISSUER + "/jwks.json"
APP_HOSTS = ("broker.test", "b.test")  # what the tests' in-process clients call the app
AUDIENCE = "broker-tests"
HS_SECRET = "a-shared-secret-of-at-least-32-bytes!!"
APP_ORIGIN = "https://app.example.com"

SettingsFactory = Callable[..., Settings]


class Build(Protocol):
    """The app_client fixture: settings in, a client of the started app out."""

    async def __call__(
        self, settings: Settings | None = None, wait_ready: bool = True
    ) -> httpx.AsyncClient: ...


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """No test reads the developer's own environment or .env."""
    for name in list(os.environ):
        if name.startswith(("BROKER_", "VIDEO_DB_", "VIDEODB_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def issuer() -> DevIssuer:
    """A development identity provider with one RSA key."""
    return DevIssuer(issuer=ISSUER, kid="test-key-1")


@pytest.fixture
def make_settings() -> SettingsFactory:
    """Settings for JWKS mode against the fakes, with overrides."""

    def factory(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "videodb_api_key": API_KEY,
            "videodb_api": VIDEODB,
            "auth_jwks_url": JWKS_URL,
            "auth_issuer": ISSUER,
            "auth_audience": AUDIENCE,
            "cors_origins": [APP_ORIGIN],
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return factory


def upstream_ok(request: httpx.Request) -> httpx.Response:
    """VideoDB as documented: a fresh st- token for the asked lifetime, as the stand-in
    answers it."""
    return httpx.Response(200, json=token_answer(json.loads(request.content)["expires_in"]))


@pytest.fixture
def network(issuer: DevIssuer) -> Iterator[respx.MockRouter]:
    """The outside world at the transport: the JWKS and VideoDB's token endpoint."""
    with respx.mock(assert_all_called=False, using="httpx") as router:
        # respx sits at the client (httpx's own level, whatever transport is below it):
        # the tests' own clients to the app in-process go on to the app
        for host in APP_HOSTS:
            router.route(host=host).pass_through()
        router.get(JWKS_URL, name="jwks").mock(return_value=httpx.Response(200, json=issuer.jwks()))
        router.post(VIDEODB + UPSTREAM_TOKEN_PATH, name="videodb").mock(side_effect=upstream_ok)
        yield router


async def _ready(client: httpx.AsyncClient) -> None:
    for _ in range(100):
        if (await client.get("/readyz")).status_code == 200:
            return
        import asyncio

        await asyncio.sleep(0.01)
    raise AssertionError("app never became ready")


@pytest.fixture
async def app_client(
    make_settings: SettingsFactory, network: respx.MockRouter
) -> AsyncIterator[Build]:
    """Build the app with given settings, run its lifespan, return an httpx client to it."""
    stack: list[LifespanManager] = []
    clients: list[httpx.AsyncClient] = []

    async def build(settings: Settings | None = None, wait_ready: bool = True) -> httpx.AsyncClient:
        app: FastAPI = create_app(settings or make_settings())
        manager = LifespanManager(app)
        await manager.__aenter__()
        stack.append(manager)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://broker.test"
        )
        clients.append(client)
        if wait_ready:
            await _ready(client)
        return client

    yield build
    for client in clients:
        await client.aclose()
    for manager in reversed(stack):
        await manager.__aexit__(None, None, None)


def bearer(token: str) -> dict[str, str]:
    """An Authorization header."""
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on a free port, killed afterwards."""
    server = RedisServer().start()
    yield server
    server.kill()


@pytest.fixture
async def shared(redis_server: RedisServer) -> AsyncIterator[SharedState]:
    """The broker's connection to that Redis."""
    state = SharedState(RedisTarget(SecretStr(redis_server.url)))
    yield state
    await state.close()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[ClusterOfThree]:
    """A three-node Redis Cluster, started once; tests flush it rather than restart it."""
    cluster = ClusterOfThree().start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinels() -> Iterator[SentinelGroup]:
    """A primary, its replica and three Sentinels, started once (tests that kill a node
    start a group of their own)."""
    group = SentinelGroup().start()
    yield group
    group.stop()
