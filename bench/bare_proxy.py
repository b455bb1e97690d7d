"""The cache-miss baseline: a bare FastAPI endpoint that forwards to VideoDB with httpx.

No identity check, no cache, no limits, no retries, no logs: the least any FastAPI + httpx
service pays for the extra hop, so the broker's own cost on a miss can be read beside it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from fastapi.responses import JSONResponse

UPSTREAM = os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:9")
API_KEY = os.environ.get("BENCH_API_KEY", "")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """One shared client, as any sensible forwarder has."""
    async with httpx.AsyncClient(timeout=5.0) as client:
        app.state.http = client
        yield


app = FastAPI(lifespan=lifespan)


@app.post("/v1/capture/session/token")
async def token() -> JSONResponse:
    """Forward, then answer with the same shape as the broker."""
    http: httpx.AsyncClient = app.state.http
    resp = await http.post(
        UPSTREAM + "/capture/session/token",
        json={"user_id": "bare-proxy", "expires_in": 900},
        headers={"x-access-token": API_KEY},
    )
    data = resp.json()["data"]
    return JSONResponse(
        {"token": data["token"], "expires_at": int(data["expires_at"]), "expires_in": 900},
        headers={"Cache-Control": "no-store"},
    )
