"""The benchmark's VideoDB: the sandbox's stand-in answering in 20 ms, its calls counted.

`python -m bench.stand_ins PORT API_KEY` serves it in a process of its own (so that it never
waits for the benchmark's GIL), with GET /calls (token calls since the last reset) and
POST /reset beside VideoDB's paths.
"""

from __future__ import annotations

import sys

from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from app.sandbox.stand_in_videodb import StandInVideoDB
from app.videodb.client import UPSTREAM_TOKEN_PATH

UPSTREAM_DELAY_S = 0.020


class CountedVideoDB:
    """The stand-in with a fixed service time, keeping no call (a count is all it needs)."""

    def __init__(self, api_key: str, delay: float = UPSTREAM_DELAY_S) -> None:
        self.videodb = StandInVideoDB(api_key, delay=delay, keep_calls=False)
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if path in ("/calls", "/reset"):
            if path == "/reset":
                self.calls = 0
            await JSONResponse({"calls": self.calls})(scope, receive, send)
            return
        if path == UPSTREAM_TOKEN_PATH:
            self.calls += 1
        await self.videodb(scope, receive, send)


def main() -> None:
    """Serve it on 127.0.0.1:PORT."""
    import uvicorn

    port, api_key = int(sys.argv[1]), sys.argv[2]
    uvicorn.run(
        CountedVideoDB(api_key),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )


if __name__ == "__main__":
    main()
