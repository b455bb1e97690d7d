"""`python -m bench.videodb_call`: CPU time of one VideoDB token call, in isolation.

The stand-in VideoDB (bench.stand_ins, its own process) answers in 20 ms; this process makes
calls 8 at a time on uvloop and counts its own CPU time per call, for the broker's client
(VideoDBClient.mint over httpx and transport.py) beside aiohttp alone (the floor, no httpx),
in alternating rounds; medians of the rounds and their range.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import aiohttp
import uvloop
from pydantic import SecretStr

from app.videodb.client import UPSTREAM_TOKEN_PATH, VideoDBClient, build_http_client
from bench.run import API_KEY, start_videodb

ROUNDS, CALLS, IN_FLIGHT = 7, 1500, 8

Call = Callable[[int], Awaitable[object]]


async def _round(call: Call) -> float:
    queue = iter(range(CALLS))

    async def worker() -> None:
        for i in queue:
            await call(i)

    started = time.process_time()
    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    return (time.process_time() - started) * 1e6 / CALLS


async def main() -> None:
    proc, url = start_videodb()
    http = build_http_client(5.0)
    client = VideoDBClient(http, SecretStr(API_KEY), url, 5.0)
    session = aiohttp.ClientSession()
    headers = {"x-access-token": API_KEY, "Content-Type": "application/json"}

    async def broker(i: int) -> object:
        return await client.mint(f"user-{i}", 900)

    async def floor(i: int) -> object:
        body = {"user_id": f"user-{i}", "expires_in": 900}
        async with session.post(url + UPSTREAM_TOKEN_PATH, json=body, headers=headers) as resp:
            return await resp.read()

    variants: dict[str, Call] = {"broker's client": broker, "aiohttp alone": floor}
    results: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for call in variants.values():
            await _round(call)  # warm-up: connections opened, code paths hot
        for _ in range(ROUNDS):
            for name, call in variants.items():
                results[name].append(await _round(call))
    finally:
        await http.aclose()
        await session.close()
        proc.terminate()
    for name, values in results.items():
        print(
            f"{name:16} {statistics.median(values):6.0f} us of CPU a call "
            f"({min(values):.0f}-{max(values):.0f})"
        )


if __name__ == "__main__":
    uvloop.run(main())
