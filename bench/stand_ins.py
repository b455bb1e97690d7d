"""The benchmark's neighbours: a VideoDB that answers in 20 ms and counts calls, and a JWKS."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

UPSTREAM_DELAY_S = 0.020


class SlowVideoDB:
    """VideoDB's token endpoint with a fixed service time."""

    def __init__(self, delay: float = UPSTREAM_DELAY_S) -> None:
        self.delay = delay
        self.calls = 0
        self._ids = itertools.count()

    def app(self) -> Starlette:
        async def create(request: Request) -> JSONResponse:
            self.calls += 1
            body: dict[str, Any] = await request.json()
            await asyncio.sleep(self.delay)
            ttl = int(body.get("expires_in", 900))
            return JSONResponse(
                {
                    "success": True,
                    "data": {
                        "token": f"st-bench-{next(self._ids):012d}",
                        "expires_at": time.time() + ttl,
                        "expires_in": ttl,
                    },
                }
            )

        async def calls(_: Request) -> JSONResponse:
            return JSONResponse({"calls": self.calls})

        async def reset(_: Request) -> JSONResponse:
            self.calls = 0
            return JSONResponse({"calls": 0})

        return Starlette(
            routes=[
                Route("/capture/session/token", create, methods=["POST"]),
                Route("/calls", calls),
                Route("/reset", reset, methods=["POST"]),
            ]
        )


def main() -> None:
    """Serve the slow VideoDB in its own process (python -m bench.stand_ins PORT)."""
    import sys

    import uvicorn

    uvicorn.run(
        SlowVideoDB().app(),
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
