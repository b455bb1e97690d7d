"""Forwarders lighter than bench/bare_proxy.py, to see where one HTTP hop's time goes.

`raw_app` writes HTTP/1.1 to an asyncio stream by hand: the floor for any Python hop.
`httpx_app` is a bare ASGI app with one shared `httpx.AsyncClient`: the hop without FastAPI.
Each answers POST on any path with the broker's response shape, for `BENCH_ONLY=hop`.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import httpx
from starlette.types import ASGIApp, Receive, Scope, Send

UPSTREAM = os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:9")
API_KEY = os.environ.get("BENCH_API_KEY", "")
_BODY = b'{"user_id": "hop", "expires_in": 900}'
_state: dict[str, Any] = {}


async def _lifespan(receive: Receive, send: Send, start: Any, stop: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await start()
            await send({"type": "lifespan.startup.complete"})
        else:
            await stop()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _answer(send: Send, data: dict[str, Any]) -> None:
    body = json.dumps(
        {"token": data["token"], "expires_at": int(data["expires_at"]), "expires_in": 900}
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def raw_app(scope: Scope, receive: Receive, send: Send) -> None:
    """One kept-alive asyncio stream to the stand-in, HTTP/1.1 written and read by hand."""

    async def start() -> None:
        host, port = httpx.URL(UPSTREAM).host, httpx.URL(UPSTREAM).port or 80
        _state["stream"] = await asyncio.open_connection(host, port)

    async def stop() -> None:
        _state["stream"][1].close()

    if scope["type"] == "lifespan":
        await _lifespan(receive, send, start, stop)
        return
    await receive()
    reader, writer = _state["stream"]
    writer.write(
        b"POST /capture/session/token HTTP/1.1\r\nHost: videodb\r\n"
        b"Content-Type: application/json\r\nx-access-token: " + API_KEY.encode() + b"\r\n"
        b"Content-Length: %d\r\n\r\n" % len(_BODY) + _BODY
    )
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.lower().split(b"\r\n")
        if line.startswith(b"content-length:")
    )
    await _answer(send, json.loads(await reader.readexactly(length))["data"])


def _httpx_forwarder() -> ASGIApp:
    """A bare ASGI app forwarding through one shared httpx.AsyncClient, without FastAPI."""

    async def start() -> None:
        _state["client"] = httpx.AsyncClient(timeout=5.0)

    async def stop() -> None:
        await _state["client"].aclose()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send, start, stop)
            return
        await receive()
        resp = await _state["client"].post(
            UPSTREAM + "/capture/session/token",
            content=_BODY,
            headers={"Content-Type": "application/json", "x-access-token": API_KEY},
        )
        await _answer(send, resp.json()["data"])

    return app


httpx_app = _httpx_forwarder()  # httpx's default transport: httpcore over anyio
