"""`python -m bench.fast_path_ab [REF ...]`: a cache hit's cost through the app, in process.

Variants, each in worker processes of its own:

- `as built`: this tree's broker;
- `fastapi`: this tree with the token route served by FastAPI's own APIRoute (its parameter
  machinery, its per-route exception wrapper) instead of TokenRoute;
- each REF given (a commit, a tag, HEAD for the last commit when the tree has changes): the
  broker as it was there, from a temporary git worktree whose `app` package the worker
  imports instead of this tree's (this harness, the interpreter and the packages are the same).

Each round drives 2,000 hits (after 500 to warm up) straight through each variant's ASGI app
(no sockets, no server), the variants in a new random order every round. A variant has
BENCH_AB_WORKERS processes (default 3), which take its rounds in turn: two processes of the
same code can differ steadily for as long as they live, and several average that out
(docs/performance.md). Printed: each variant's median of
per-round microseconds a hit, with the lowest and highest round, and the median of per-round
differences from `as built` (the variants share the machine at the same moments, so the
differences are steadier than the figures). BENCH_AB_ROUNDS (default 21); BENCH_AB_LOG_LEVEL
(default WARNING: no line written; INFO writes the audit line of every hit, as `make bench`
and production do, to /dev/null).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, TextIO
from unittest.mock import patch

REPO = Path(__file__).resolve().parents[1]
SECRET = "bench-shared-secret-of-at-least-32-bytes"
HITS, WARM_UP = 2000, 500
ROUNDS = int(os.environ.get("BENCH_AB_ROUNDS", "21"))
LOG_LEVEL = os.environ.get("BENCH_AB_LOG_LEVEL", "WARNING")
WORKERS = int(os.environ.get("BENCH_AB_WORKERS", "3"))
THIS_TREE, FASTAPI = "as built", "fastapi"


def _app(variant: str) -> Any:
    """The broker to measure, from whichever `app` package is first on the path."""
    try:  # a commit's settings live where that commit kept them
        settings_class: Any = importlib.import_module("app.config").Settings
    except (ImportError, AttributeError):
        settings_class = importlib.import_module("app.settings").Settings
    from pydantic import SecretStr

    from app.main import create_app

    settings = settings_class(
        _env_file=None,
        videodb_api_key=SecretStr("sk-bench-0123456789abcdef"),
        videodb_api="https://videodb.bench",
        auth_hs256_secret=SecretStr(SECRET),
        auth_audience="bench",
        log_level=LOG_LEVEL,
        rate_limit="100000000/minute",
    )
    if variant != FASTAPI:
        return create_app(settings)
    from fastapi.routing import APIRoute

    # the same route, built with FastAPI's own handler (its parameter machinery)
    with patch("app.web.token_endpoint.TokenRoute", APIRoute):
        return create_app(settings)


async def _worker(variant: str, answers: TextIO) -> None:
    """Build the app once; answer each line on stdin with one round's µs a hit."""
    import httpx
    import respx
    from asgi_lifespan import LifespanManager
    from jose import jwt

    from app.web.token_endpoint import TOKEN_PATH

    bearer = jwt.encode(
        {"sub": "u", "aud": "bench", "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256"
    )
    headers = [(b"host", b"b"), (b"authorization", f"Bearer {bearer}".encode())]
    token = {"token": "st-" + "x" * 32, "expires_at": time.time() + 900, "expires_in": 900}
    answer = {"success": True, "data": token}
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

            print("ready", file=answers, flush=True)
            for _ in sys.stdin:
                for _ in range(WARM_UP):
                    await hit()
                started = time.perf_counter()
                for _ in range(HITS):
                    await hit()
                print((time.perf_counter() - started) / HITS * 1e6, file=answers, flush=True)


def _start(variant: str, tree: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--worker", variant],
        env={**os.environ, "PYTHONPATH": str(tree)},  # that tree's `app`, this harness
        cwd=tree,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _ready(variant: str, worker: subprocess.Popen[str]) -> subprocess.Popen[str]:
    assert worker.stdout is not None
    if worker.stdout.readline().strip() != "ready":
        raise SystemExit(f"the {variant} worker did not start")
    return worker


def _round(worker: subprocess.Popen[str]) -> float:
    assert worker.stdin is not None
    assert worker.stdout is not None
    worker.stdin.write("go\n")
    worker.stdin.flush()
    return float(worker.stdout.readline())


def main(refs: list[str]) -> None:
    """Start the workers, run the rounds, print the medians."""
    from bench import worktrees  # here: a worker imports another tree's packages

    with tempfile.TemporaryDirectory(prefix="fast-path-ab-") as tmp:
        trees = {ref: worktrees.checkout(ref, Path(tmp)) for ref in refs}
        try:
            sources = {THIS_TREE: REPO, FASTAPI: REPO, **trees}
            started = {v: [_start(v, tree) for _ in range(WORKERS)] for v, tree in sources.items()}
            workers = {v: [_ready(v, w) for w in each] for v, each in started.items()}
            results: dict[str, list[float]] = {variant: [] for variant in workers}
            for turn in range(ROUNDS):
                order = list(workers)
                random.shuffle(order)
                for variant in order:
                    results[variant].append(_round(workers[variant][turn % WORKERS]))
            for worker in (w for each in workers.values() for w in each):
                assert worker.stdin is not None
                worker.stdin.close()
                worker.wait()
        finally:
            worktrees.remove(trees.values())
    built = results[THIS_TREE]
    print(f"a cache hit in process, µs: median of {ROUNDS} rounds of {HITS} hits (lowest-highest)")
    for variant, values in results.items():
        line = (
            f"{variant:>12}: {statistics.median(values):5.1f} ({min(values):.1f}-{max(values):.1f})"
        )
        if variant != THIS_TREE:
            differences = [v - b for v, b in zip(values, built, strict=True)]
            line += f"   {statistics.median(differences):+5.1f} against {THIS_TREE}"
        print(line)
    print(json.dumps({v: [round(x, 2) for x in values] for v, values in results.items()}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")  # the parent's pipe
        with open(os.devnull, "w") as lines, contextlib.redirect_stdout(lines):  # the app's logs
            asyncio.run(_worker(sys.argv[2], answers))
    else:
        main(sys.argv[1:])
