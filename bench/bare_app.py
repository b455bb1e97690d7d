"""The baseline: a bare FastAPI endpoint returning the same JSON as a cache hit."""

from __future__ import annotations

import time

from fastapi import FastAPI
from fastapi.responses import JSONResponse

app = FastAPI()


@app.post("/v1/capture/session/token")
async def token() -> JSONResponse:
    """Same shape and headers as the broker's answer, no work behind it."""
    expires_at = int(time.time()) + 900
    return JSONResponse(
        {"token": "st-" + "x" * 32, "expires_at": expires_at, "expires_in": 900},
        headers={"Cache-Control": "no-store"},
    )
