"""The host's speed, in the unit a cache miss is paid in, measured in the run that uses it.

This machine's speed has differed by up to two times between sessions with the same code
(aiohttp alone has cost 217-425 µs of CPU a call), so an absolute CPU figure means little without
the speed it was measured at. The yardstick: calls made with aiohttp alone (no httpx, no
broker) to the stand-in VideoDB, 8 in flight on uvloop, their CPU time a call; the same
loopback sockets, parser and event loop a miss uses, so it moves with the host as a miss
does. `python -m bench.videodb_call` measures the broker's client against it.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import aiohttp
import uvloop

from app.videodb.client import UPSTREAM_TOKEN_PATH

ROUNDS, CALLS, IN_FLIGHT = 5, 1500, 8

Call = Callable[[int], Awaitable[object]]


async def cpu_per_call(call: Call, calls: int = CALLS) -> float:
    """Microseconds of this process's CPU a call, `calls` calls made IN_FLIGHT at a time."""
    queue = iter(range(calls))

    async def worker() -> None:
        for i in queue:
            await call(i)

    started = time.process_time()
    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    return (time.process_time() - started) * 1e6 / calls


def aiohttp_alone(session: aiohttp.ClientSession, videodb_url: str, api_key: str) -> Call:
    """One token call to the stand-in with aiohttp alone: the floor of a miss's call."""
    headers = {"x-access-token": api_key, "Content-Type": "application/json"}

    async def call(i: int) -> object:
        body = {"user_id": f"yardstick-{i}", "expires_in": 900}
        async with session.post(
            videodb_url + UPSTREAM_TOKEN_PATH, json=body, headers=headers
        ) as resp:
            return await resp.read()

    return call


async def _measure(videodb_url: str, api_key: str, rounds: int) -> list[float]:
    async with aiohttp.ClientSession() as session:
        call = aiohttp_alone(session, videodb_url, api_key)
        await cpu_per_call(call, 200)  # warm-up: connections opened, code paths hot
        return [await cpu_per_call(call) for _ in range(rounds)]


def yardstick(videodb_url: str, api_key: str, rounds: int = ROUNDS) -> tuple[float, float, float]:
    """The host's speed now: µs of CPU a call with aiohttp alone, median and range of rounds."""
    values = uvloop.run(_measure(videodb_url, api_key, rounds))
    return statistics.median(values), min(values), max(values)
