"""`python -m bench.videodb_call`: CPU time of one VideoDB token call, in isolation.

The stand-in VideoDB (bench.stand_ins, its own process) answers in 20 ms; this process makes
calls 8 at a time on uvloop and counts its own CPU time per call, for the broker's client
(VideoDBClient.mint over httpx and transport.py) beside aiohttp alone (the floor, no httpx),
in alternating rounds; medians of the rounds and their range.
"""

from __future__ import annotations

import statistics

import aiohttp
import uvloop
from pydantic import SecretStr

from app.videodb.client import VideoDBClient, build_http_client
from bench.run import API_KEY, start_videodb
from bench.yardstick import Call, aiohttp_alone, cpu_per_call

ROUNDS = 7


async def main() -> None:
    proc, url = start_videodb()
    http = build_http_client(5.0)
    client = VideoDBClient(http, SecretStr(API_KEY), url, 5.0)
    session = aiohttp.ClientSession()

    async def broker(i: int) -> object:
        return await client.mint(f"user-{i}", 900)

    variants: dict[str, Call] = {
        "broker's client": broker,
        "aiohttp alone": aiohttp_alone(session, url, API_KEY),
    }
    results: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for call in variants.values():
            await cpu_per_call(call)  # warm-up: connections opened, code paths hot
        for _ in range(ROUNDS):
            for name, call in variants.items():
                results[name].append(await cpu_per_call(call))
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
