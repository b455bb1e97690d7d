"""`token-broker demo`: the broker against built-in stand-ins, no account or IdP needed."""

from __future__ import annotations

import asyncio
import logging
import secrets
import shlex

import uvicorn
from pydantic import SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from app.sandbox.dev_issuer import DevIssuer
from app.sandbox.loopback import base_url, bind_loopback, server_for
from app.sandbox.stand_in_videodb import stand_in_videodb
from app.settings import Settings
from app.web.server_protocol import SERVER_OPTIONS

DEMO_AUDIENCE = "videodb-token-broker-demo"
DEMO_USER = "demo-user"
DEMO_ORIGIN = "http://localhost:5173"


class DemoSettings(Settings):
    """Settings from arguments only: the demo never reads the environment or .env."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def demo_settings(videodb_url: str, issuer_url: str, api_key: str) -> Settings:
    """The broker's settings for the sandbox."""
    return DemoSettings(
        videodb_api_key=SecretStr(api_key),
        videodb_api=videodb_url,
        auth_issuer=issuer_url,
        auth_jwks_url=issuer_url + "/jwks.json",
        auth_audience=DEMO_AUDIENCE,
        cors_origins=[DEMO_ORIGIN],
        capture_sessions="on",
        log_format="console",
    )


def _curl_post(url: str, bearer: str, body: str) -> str:
    """A curl POST with the bearer and a JSON body, quoted so that it works as printed."""
    words = ["-H", f"Authorization: Bearer {bearer}", "-H", "Content-Type: application/json"]
    return " ".join(["curl", "-sS", "-X", "POST", *map(shlex.quote, [url, *words, "-d", body])])


def curl_line(broker_url: str, bearer: str) -> str:
    """A curl command that mints a token."""
    return _curl_post(f"{broker_url}/v1/capture/session/token", bearer, '{"expires_in": 600}')


def capture_curl_line(broker_url: str, bearer: str) -> str:
    """A curl command that creates a capture session and prints it with its token."""
    return _curl_post(f"{broker_url}/v1/capture/sessions", bearer, '{"metadata": {"app": "demo"}}')


def banner(broker_url: str, bearer: str) -> str:
    """What the newcomer reads first."""
    return "\n".join(
        [
            "",
            "videodb-token-broker demo: a sandbox, not for production",
            f"  broker            {broker_url}",
            "  VideoDB           a built-in stand-in (no account needed)",
            "  identity provider a built-in development issuer",
            "",
            f"Bearer token for user '{DEMO_USER}' (valid 24 h):",
            f"  {bearer}",
            "",
            "Mint a session token:",
            f"  {curl_line(broker_url, bearer)}",
            "",
            "Create a capture session (its id and a token; GET its Location to follow it):",
            f"  {capture_curl_line(broker_url, bearer)}",
            "",
            "Press Ctrl+C to stop.",
            "",
        ]
    )


async def run_demo(port: int) -> None:
    """Start the stand-ins and the broker; print the bearer and curl line; serve until stopped."""
    from app.main import create_app

    api_key = "sk-demo-" + secrets.token_hex(8)
    videodb_sock, issuer_sock = bind_loopback(), bind_loopback()
    broker_sock = bind_loopback(port)
    issuer = DevIssuer(issuer=base_url(issuer_sock))
    settings = demo_settings(base_url(videodb_sock), issuer.issuer, api_key)
    broker_url = base_url(broker_sock)
    bearer = issuer.mint(DEMO_USER, DEMO_AUDIENCE, lifetime=86400)

    stand_ins = [
        server_for(stand_in_videodb(api_key)),
        server_for(issuer.asgi_app()),
    ]
    broker = server_for(create_app(settings), **SERVER_OPTIONS)
    # uvicorn's start and stop lines come from one logger shared by all three servers: the
    # newcomer sees the broker's only, not each line three times.
    lifecycle = logging.getLogger("uvicorn.error")
    level = lifecycle.level
    lifecycle.setLevel(logging.WARNING)
    tasks = [
        asyncio.create_task(stand_ins[0].serve(sockets=[videodb_sock])),
        asyncio.create_task(stand_ins[1].serve(sockets=[issuer_sock])),
    ]
    await _until_started(stand_ins, tasks)
    lifecycle.setLevel(level)
    broker_task = asyncio.create_task(broker.serve(sockets=[broker_sock]))
    await _until_started([broker], [broker_task])
    if broker.started:
        print(banner(broker_url, bearer), flush=True)
    await broker_task
    lifecycle.setLevel(logging.WARNING)
    for server in stand_ins:
        server.should_exit = True
    await asyncio.gather(*tasks)


async def _until_started(servers: list[uvicorn.Server], tasks: list[asyncio.Task[None]]) -> None:
    """uvicorn has no start event: poll its flag, giving up if a server ended instead."""
    while not all(s.started for s in servers) and not any(t.done() for t in tasks):  # noqa: ASYNC110 - no event to wait on
        await asyncio.sleep(0.05)
