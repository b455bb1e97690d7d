"""`python -m bench.fast_path_ab`: a cache hit's cost through the app, in process, two ways.

`handler`: the broker as built (its route runs the handler alone: ServedByItsHandler).
`fastapi`: the same route served by FastAPI's own APIRoute (its parameter machinery).
Each round drives 2,000 hits straight through the ASGI app (no sockets, no server), the
variants alternating; prints the median microseconds per hit of each.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import MutableMapping
from typing import Any
from unittest.mock import patch

import httpx
import respx
from asgi_lifespan import LifespanManager
from fastapi.routing import APIRoute
from jose import jwt
from pydantic import SecretStr

from app.config import Settings
from app.main import create_app
from app.sandbox.stand_in_videodb import token_answer
from app.web.token_endpoint import TOKEN_PATH

SECRET = "bench-shared-secret-of-at-least-32-bytes"
ROUNDS, HITS = 7, 2000


def _app(variant: str) -> Any:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        videodb_api_key=SecretStr("sk-bench-0123456789abcdef"),
        videodb_api="https://videodb.bench",
        auth_hs256_secret=SecretStr(SECRET),
        auth_audience="bench",
        log_level="WARNING",
        rate_limit="100000000/minute",
    )
    if variant == "handler":
        return create_app(settings)
    # the same route, built with FastAPI's own handler (its parameter machinery)
    with patch("app.web.token_endpoint.ServedByItsHandler", APIRoute):
        return create_app(settings)


async def _per_hit_us(variant: str) -> float:
    bearer = jwt.encode(
        {"sub": "u", "aud": "bench", "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256"
    )
    headers = [(b"host", b"b"), (b"authorization", f"Bearer {bearer}".encode())]
    answer = token_answer(900)
    with respx.mock(assert_all_called=False, using="httpx") as router:
        router.post("https://videodb.bench/capture/session/token").mock(
            return_value=httpx.Response(200, json=answer)
        )
        async with LifespanManager(_app(variant)) as manager:

            async def hit() -> None:
                scope = {
                    "type": "http",
                    "asgi": {"version": "3.0"},
                    "http_version": "1.1",
                    "method": "POST",
                    "scheme": "http",
                    "path": TOKEN_PATH,
                    "raw_path": TOKEN_PATH.encode(),
                    "query_string": b"",
                    "root_path": "",
                    "headers": headers,
                    "client": ("127.0.0.1", 1),
                    "server": ("127.0.0.1", 80),
                }
                statuses: list[int] = []

                async def receive() -> dict[str, Any]:
                    return {"type": "http.request", "body": b"", "more_body": False}

                async def send(message: MutableMapping[str, Any]) -> None:
                    if message["type"] == "http.response.start":
                        statuses.append(message["status"])

                await manager.app(scope, receive, send)
                assert statuses == [200], statuses

            for _ in range(500):  # warm-up
                await hit()
            started = time.perf_counter()
            for _ in range(HITS):
                await hit()
            return (time.perf_counter() - started) / HITS * 1e6


async def main() -> None:
    results: dict[str, list[float]] = {"handler": [], "fastapi": []}
    for _ in range(ROUNDS):
        for variant in results:
            results[variant].append(await _per_hit_us(variant))
    for variant, values in results.items():
        print(f"{variant:>10}: {statistics.median(values):.0f} µs a hit (median of {ROUNDS})")


if __name__ == "__main__":
    asyncio.run(main())
