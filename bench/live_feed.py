"""`python -m bench.live_feed`: live capture's figures, one replica beside two.

1. Event to feed: the stand-in VideoDB's socket pushes AI events, each carrying the moment it
   was sent in `start`; the owner's feed (SSE over HTTP) receives them; the difference is
   the time from VideoDB's event to the owner. One broker holding both the socket and the
   feed, then two brokers sharing a real Redis, the feed on the one without the socket.
2. Memory per open feed: a broker's resident size before and after 200 feeds are open.
Prints medians and p99s; docs/performance.md quotes a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from app.sandbox.dev_issuer import DevIssuer
from app.sandbox.live_plane import LivePlane, StandInSocket
from app.sandbox.loopback import base_url, bind_loopback, server_for
from app.sandbox.stand_in_videodb import StandInVideoDB

REPO = Path(__file__).resolve().parents[1]
EVENTS = int(os.environ.get("BENCH_LIVE_EVENTS", "400"))
FEEDS = int(os.environ.get("BENCH_LIVE_FEEDS", "200"))
AUDIENCE = "bench-live"
API_KEY = "sk-bench-live-0123456789"


def _free_port() -> int:
    sock = bind_loopback()
    port: int = sock.getsockname()[1]
    sock.close()
    return port


def _broker(port: int, videodb: str, issuer: str, redis_url: str | None) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "VIDEO_DB_"))} | {
        "PYTHONPATH": str(REPO),
        "VIDEO_DB_API_KEY": API_KEY,
        "VIDEO_DB_API": videodb,
        "BROKER_AUTH_JWKS_URL": issuer + "/jwks.json",
        "BROKER_AUTH_AUDIENCE": AUDIENCE,
        "BROKER_CAPTURE_SESSIONS": "on",
        "BROKER_CAPTURE_LIVE": "on",
        "BROKER_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "BROKER_CAPTURE_WEBHOOK_SECRET": "bench-live-webhook-secret-32-bytes!!",
        "BROKER_CAPTURE_PIPELINES": json.dumps([{"channel": "mic", "run": "transcript"}]),
        "BROKER_RATE_LIMIT": "100000/minute",
        "BROKER_CAPTURE_RATE_LIMIT": "100000/minute",
        "BROKER_CAPTURE_READ_RATE_LIMIT": "100000/minute",
        "BROKER_LOG_LEVEL": "WARNING",
        **({"BROKER_REDIS_URL": redis_url} if redis_url else {}),
    }
    command = [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, cwd=tempfile.gettempdir())


async def _ready(url: str) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(300):
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url + "/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} never became ready")


async def _feed(
    client: httpx.AsyncClient, url: str, bearer: dict[str, str]
) -> AsyncIterator[dict[str, str]]:
    async with client.stream("GET", url, headers=bearer, timeout=None) as resp:
        assert resp.status_code == 200, resp.status_code
        event: dict[str, str] = {}
        async for line in resp.aiter_lines():
            if not line:
                if event:
                    yield event
                event = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                event[name] = value.removeprefix(" ")


async def _latencies(
    plane: LivePlane, create_at: str, feed_at: str, bearer: dict[str, str]
) -> list[float]:
    """Push EVENTS events through the socket and time each one to the owner's feed."""
    async with httpx.AsyncClient(timeout=30) as client:
        created = await client.post(create_at + "/v1/capture/sessions", headers=bearer, json={})
        session_id = created.json()["session_id"]
        url = f"{feed_at}/v1/capture/sessions/{session_id}/events"
        arrived: list[float] = []

        async def read() -> None:
            async for event in _feed(client, url, bearer):
                if event.get("event") == "transcript":
                    sent = json.loads(event["data"])["start"]
                    arrived.append(time.time() - sent)
                    if len(arrived) == EVENTS:
                        return

        reader = asyncio.create_task(read())
        await asyncio.sleep(0.3)
        plane.set_status(session_id, "active")
        await plane.webhook(session_id, "capture_session.active")
        while not plane.socket.connections:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        for _ in range(EVENTS):
            message = {"channel": "transcript", "data": {"text": "x", "start": time.time()}}
            await plane.socket.push(json.dumps(message))
            await asyncio.sleep(0.02)
        await asyncio.wait_for(reader, 30)
        for connection in list(plane.socket.connections):
            await connection.close()
        return arrived


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _memory_per_feed(broker: subprocess.Popen[bytes], url: str, issuer: DevIssuer) -> float:
    async with httpx.AsyncClient(
        timeout=30, limits=httpx.Limits(max_connections=FEEDS + 10)
    ) as client:
        users = [
            {"Authorization": f"Bearer {issuer.mint(f'u{i}', AUDIENCE)}"} for i in range(FEEDS // 5)
        ]
        sessions = []
        for bearer in users:
            created = await client.post(url + "/v1/capture/sessions", headers=bearer, json={})
            sessions.append((bearer, created.json()["session_id"]))
        await asyncio.sleep(1.0)
        before = _rss_mib(broker.pid)
        streams = []
        for bearer, session_id in sessions:
            for _ in range(5):
                stream = client.stream(
                    "GET", f"{url}/v1/capture/sessions/{session_id}/events", headers=bearer
                )
                streams.append(stream)
                resp = await stream.__aenter__()
                assert resp.status_code == 200
        await asyncio.sleep(2.0)
        after = _rss_mib(broker.pid)
        for stream in streams:
            with contextlib.suppress(Exception):
                await stream.__aexit__(None, None, None)
        return (after - before) * 1024 / len(streams)


def _summary(name: str, values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    p50 = statistics.median(ms)
    return f"{name}: event to feed p50 {p50:.2f} ms, p99 {p99:.2f} ms ({len(ms)} events)"


async def main() -> None:
    socket = StandInSocket()
    await socket.start()
    plane = LivePlane(StandInVideoDB(API_KEY), socket)
    issuer_sock, videodb_sock = bind_loopback(), bind_loopback()
    issuer = DevIssuer(issuer=base_url(issuer_sock))
    servers = [server_for(issuer.asgi_app()), server_for(plane)]
    tasks = [
        asyncio.create_task(s.serve(sockets=[sock]))
        for s, sock in zip(servers, [issuer_sock, videodb_sock], strict=True)
    ]
    while not all(s.started for s in servers):
        await asyncio.sleep(0.05)
    videodb, jwks = base_url(videodb_sock), base_url(issuer_sock)
    bearer = {"Authorization": f"Bearer {issuer.mint('owner', AUDIENCE)}"}
    redis_port = _free_port()
    redis = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(redis_port), "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    ports = [_free_port() for _ in range(3)]
    one = _broker(ports[0], videodb, jwks, None)
    pair = [_broker(p, videodb, jwks, f"redis://127.0.0.1:{redis_port}/0") for p in ports[1:]]
    try:
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        for url in urls:
            await _ready(url)
        print(_summary("one replica", await _latencies(plane, urls[0], urls[0], bearer)))
        print(
            _summary(
                "two replicas, feed on the other", await _latencies(plane, urls[1], urls[2], bearer)
            )
        )
        per_feed = await _memory_per_feed(one, urls[0], issuer)
        print(f"memory per open feed: {per_feed:.1f} KiB ({FEEDS} feeds, one replica)")
    finally:
        for process in [one, *pair, redis]:
            process.terminate()
            process.wait(30)
        for server in servers:
            server.should_exit = True
        await asyncio.gather(*tasks)
        await socket.stop()


if __name__ == "__main__":
    asyncio.run(main())
