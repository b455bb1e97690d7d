"""`token-broker demo`: the broker against built-in stand-ins, no account or IdP needed."""

from __future__ import annotations

import asyncio
import logging
import secrets
import shlex
from collections.abc import Sequence
from typing import Any

import uvicorn
from pydantic import SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from app.config import Settings
from app.sandbox.dev_issuer import DevIssuer
from app.sandbox.live_plane import LivePlane, StandInSocket
from app.sandbox.loopback import base_url, bind_loopback, server_for
from app.sandbox.stand_in_videodb import StandInVideoDB
from app.server.protocol import SERVER_OPTIONS

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


DEMO_PROVIDERS = ("web", "desktop")
DEMO_PIPELINES = [
    {"channel": "mic", "run": "transcript"},
    {"channel": "screen", "run": "visual_index", "prompt": "What is on the screen?"},
]  # the names of `--providers 2`, each its own prefix


def demo_settings(
    videodb_url: str, issuer_urls: Sequence[str], api_key: str, broker_url: str | None = None
) -> Settings:
    """The broker's settings for the sandbox: one issuer in the single-issuer style, or
    several in the `BROKER_AUTH_ISSUERS` style; live capture on when the broker's own URL
    is given (VideoDB's stand-in posts its webhooks there)."""
    common: dict[str, Any] = {
        "videodb_api_key": SecretStr(api_key),
        "videodb_api": videodb_url,
        "cors_origins": [DEMO_ORIGIN],
        "capture_sessions": "on",
        "log_format": "console",
    }
    if broker_url is not None:
        common |= {
            "capture_live": "on",
            "public_url": broker_url,
            "capture_webhook_secret": SecretStr(secrets.token_urlsafe(32)),
            "capture_pipelines": DEMO_PIPELINES,
        }
    if len(issuer_urls) == 1:
        (url,) = issuer_urls
        identity: dict[str, Any] = {
            "auth_issuer": url,
            "auth_jwks_url": url + "/jwks.json",
            "auth_audience": DEMO_AUDIENCE,
        }
    else:
        identity = {
            "auth_issuers": [
                {
                    "name": name,
                    "issuer": url,
                    "jwks_url": url + "/jwks.json",
                    "audience": DEMO_AUDIENCE,
                    "user_id_prefix": f"{name}:",
                }
                for name, url in zip(DEMO_PROVIDERS, issuer_urls, strict=False)
            ]
        }
    return DemoSettings(**common, **identity)


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


def follow_line(broker_url: str, bearer: str) -> str:
    """A shell line that creates a capture session and follows its live feed to the end."""
    create = capture_curl_line(broker_url, bearer)
    read_id = "python3 -c 'import json,sys; print(json.load(sys.stdin)[\"session_id\"])'"
    follow = " ".join(
        [
            "curl",
            "-sS",
            "-N",
            shlex.quote(f"{broker_url}/v1/capture/sessions/") + '"$S"/events',
            "-H",
            shlex.quote(f"Authorization: Bearer {bearer}"),
        ]
    )
    return f"S=$({create} | {read_id}) && {follow}"


def banner(broker_url: str, bearers: Sequence[str]) -> str:
    """What the newcomer reads first."""
    lines = [
        "",
        "videodb-token-broker demo: a sandbox, not for production",
        f"  broker            {broker_url}",
        "  VideoDB           a built-in stand-in (no account needed)",
    ]
    if len(bearers) == 1:
        lines += [
            "  identity provider a built-in development issuer",
            "",
            f"Bearer token for user '{DEMO_USER}' (valid 24 h):",
            f"  {bearers[0]}",
            "",
            "Mint a session token:",
            f"  {curl_line(broker_url, bearers[0])}",
        ]
    else:
        names = ", ".join(DEMO_PROVIDERS[: len(bearers)])
        lines.append(f"  identity providers built-in development issuers: {names}")
        for name, bearer in zip(DEMO_PROVIDERS, bearers, strict=False):
            lines += [
                "",
                f"Mint a session token for '{DEMO_USER}' signed in at '{name}' "
                f"(VideoDB user '{name}:{DEMO_USER}'; bearer valid 24 h):",
                f"  {curl_line(broker_url, bearer)}",
            ]
    return "\n".join(
        [
            *lines,
            "",
            "Create a capture session (its id and a token; GET its Location to follow it):",
            f"  {capture_curl_line(broker_url, bearers[0])}",
            "",
            "Live capture: create a session and follow its feed (the stand-in plays a short",
            "recording: transcript and visual-index events, then the session stops):",
            f"  {follow_line(broker_url, bearers[0])}",
            "",
            "Press Ctrl+C to stop.",
            "",
        ]
    )


async def run_demo(port: int, providers: int = 1) -> None:
    """Start the stand-ins and the broker; print the bearers and curl lines; serve until
    stopped. With `providers` 2, two development issuers in the `BROKER_AUTH_ISSUERS` style."""
    from app.main import create_app

    api_key = "sk-demo-" + secrets.token_hex(8)
    videodb_sock = bind_loopback()
    issuer_socks = [bind_loopback() for _ in range(providers)]
    broker_sock = bind_loopback(port)
    issuers = [DevIssuer(issuer=base_url(sock)) for sock in issuer_socks]
    broker_url = base_url(broker_sock)
    settings = demo_settings(
        base_url(videodb_sock), [i.issuer for i in issuers], api_key, broker_url
    )
    bearers = [i.mint(DEMO_USER, DEMO_AUDIENCE, lifetime=86400) for i in issuers]

    socket = StandInSocket()
    await socket.start()
    videodb = LivePlane(StandInVideoDB(api_key), socket, autoplay=True)
    stand_ins = [server_for(videodb)]
    stand_ins += [server_for(issuer.asgi_app()) for issuer in issuers]
    sockets = [videodb_sock, *issuer_socks]
    broker = server_for(create_app(settings), **SERVER_OPTIONS)
    # uvicorn's start and stop lines come from one logger shared by all three servers: the
    # newcomer sees the broker's only, not each line three times.
    lifecycle = logging.getLogger("uvicorn.error")
    level = lifecycle.level
    lifecycle.setLevel(logging.WARNING)
    tasks = [
        asyncio.create_task(server.serve(sockets=[sock]))
        for server, sock in zip(stand_ins, sockets, strict=True)
    ]
    await _until_started(stand_ins, tasks)
    lifecycle.setLevel(level)
    broker_task = asyncio.create_task(broker.serve(sockets=[broker_sock]))
    await _until_started([broker], [broker_task])
    if broker.started:
        print(banner(broker_url, bearers), flush=True)
    await broker_task
    lifecycle.setLevel(logging.WARNING)
    for server in stand_ins:
        server.should_exit = True
    await asyncio.gather(*tasks)
    await socket.stop()


async def _until_started(servers: list[uvicorn.Server], tasks: list[asyncio.Task[None]]) -> None:
    """uvicorn has no start event: poll its flag, giving up if a server ended instead."""
    while not all(s.started for s in servers) and not any(t.done() for t in tasks):  # noqa: ASYNC110 - no event to wait on
        await asyncio.sleep(0.05)
