"""What tracing costs a cache hit, side by side in one run.

Figure 5 of `make bench` (`tracing_cost`): brokers alike but for tracing (off; on with the
default sampler, every trace kept; on with 10 % and 1 % of traces sampled; on with every
request dropped, `always_off`: what deciding alone costs), each exporting to an OTLP receiver
on loopback, measured in wrk rounds, in a new order each round; medians, and each one's
throughput as a ratio to the broker with tracing off in the same round, with a 95 % interval
of that median (each round's ratios on stderr), and the CPU a hit, the broker's and its
export child's, with tracing off's over it. Each variant runs in BENCH_TRACING_PROCESSES
processes (3 by default) that take its rounds in turn. With BENCH_BASELINE=REF, the broker at
REF (a temporary git worktree) at 10 %, 1 % and every request dropped, in the same rounds.

`python -m bench.tracing_cost [REF ...]`: the same variants in process: each round drives
BENCH_TRACING_HITS hits (2,000 by default, after 500 to warm up) straight through each
variant's ASGI app, as bench/fast_path_ab.py does, the variants in a new random order every
round, each in worker processes of its own (BENCH_TRACING_WORKERS, 2 by default, taking its
rounds in turn) that export to one OTLP receiver in this process. Printed per variant: the
median of per-round µs a hit on the event loop, the median of per-round differences from
tracing off, and the process's CPU µs a hit (a broker before 26ed866: its export thread's
included; since: its export process's not). Each REF given (a commit, HEAD) adds the tracing
variants of the broker as it was there, from a temporary git worktree. BENCH_TRACING_ROUNDS
(default 15); BENCH_TRACING_LOG_LEVEL (default INFO: every hit's audit line, to /dev/null, as
production writes it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any, TextIO

import httpx

from bench.intervals import median_interval
from bench.processes import family_cpu_seconds
from harness.broker_process import BrokerProcess
from harness.otlp_receiver import OtlpReceiver
from harness.servers import ThreadedServer

REPO = Path(__file__).resolve().parents[1]

VARIANTS: dict[str, dict[str, str]] = {
    "off": {},
    "on, default sampler": {"BROKER_OTEL": "on"},
    "on, 10 % sampled": {
        "BROKER_OTEL": "on",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.1",
    },
    "on, 1 % sampled": {
        "BROKER_OTEL": "on",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.01",
    },
    "on, every request dropped": {"BROKER_OTEL": "on", "OTEL_TRACES_SAMPLER": "always_off"},
}
IN_PROCESS = dict(VARIANTS)
OFF = "off"
# The broker at BENCH_BASELINE in the same rounds: the variants a change to tracing moves.
BASELINE = os.environ.get("BENCH_BASELINE", "")
if BASELINE:
    VARIANTS.update(
        {
            f"{BASELINE}: {name}": VARIANTS[name]
            for name in ("on, 10 % sampled", "on, 1 % sampled", "on, every request dropped")
        }
    )

PROCESSES = int(os.environ.get("BENCH_TRACING_PROCESSES", "3"))

Wrk = Callable[..., dict[str, float]]
WrkScript = Callable[[Path, str, str, dict[str, str]], Path]


def tracing_cost(
    settings: dict[str, str], bearer: str, path: str, rounds: int, wrk: Wrk, script: WrkScript
) -> dict[str, dict[str, float]]:
    """Median req/s, p99 and ratio to tracing off, for each variant; MiB the receiver got."""
    from bench import worktrees  # here: a worker imports another tree's packages

    receiver = OtlpReceiver(keep=False)  # a collector's work is not the broker's: none done here
    server = ThreadedServer(receiver).start()
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": server.url}
    baseline = worktrees.checkout(BASELINE) if BASELINE else None
    # Several processes a variant, taking its rounds in turn: two processes of the same code
    # differ steadily by a few per cent for as long as they live (docs/performance.md).
    brokers = {
        name: [
            BrokerProcess(
                {**settings, **otel, **extra},
                repo=baseline if baseline and name.startswith(f"{BASELINE}: ") else REPO,
            ).wait_ready()
            for _ in range(PROCESSES)
        ]
        for name, extra in VARIANTS.items()
    }
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            headers = {"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"}
            post = script(Path(tmp), "post.lua", "{}", headers)
            for broker in (b for each in brokers.values() for b in each):
                httpx.post(broker.url + path, headers={"Authorization": f"Bearer {bearer}"})
                wrk(broker.url + path, post)  # warm-up, not counted
            for turn in range(rounds):
                order = list(brokers)  # a new order each round: no variant always goes first
                random.shuffle(order)
                for name in order:
                    broker = brokers[name][turn % PROCESSES]
                    cpu = family_cpu_seconds(broker.proc.pid)
                    each = wrk(broker.url + path, post)
                    used = family_cpu_seconds(broker.proc.pid) - cpu  # its export child's too
                    each["cpu_us"] = used * 1e6 / each["requests"]
                    runs[name].append(each)
    finally:
        for broker in (b for each in brokers.values() for b in each):
            broker.terminate()
        server.stop()
        if baseline is not None:
            worktrees.remove([baseline])
    figures: dict[str, dict[str, float]] = {}
    for name, measured in runs.items():
        ratios = [m["rps"] / off["rps"] for m, off in zip(measured, runs["off"], strict=True)]
        low, high = median_interval(ratios)
        figures[name] = {
            "rps": statistics.median(m["rps"] for m in measured),
            "p99_ms": statistics.median(m["p99_ms"] for m in measured),
            "ratio": statistics.median(ratios),
            "ratio_low": low,  # the 95 % interval of the median
            "ratio_high": high,
            # CPU a hit, the broker's and its export child's: the work itself, which moves
            # less with what else the machine runs than the throughput does
            "cpu_us": statistics.median(m["cpu_us"] for m in measured),
            "cpu_ratio": statistics.median(
                off["cpu_us"] / m["cpu_us"] for m, off in zip(measured, runs["off"], strict=True)
            ),
        }
        print(  # the spread, beside figure 5's medians
            f"   ({name}: rounds' ratios {min(ratios):.2f}-{max(ratios):.2f}: "
            + " ".join(f"{r:.2f}" for r in ratios)
            + ")",
            file=sys.stderr,
        )
    figures["receiver"] = {"mib": receiver.bytes_received / 2**20}
    return figures


SECRET = "bench-shared-secret-of-at-least-32-bytes"
HITS = int(os.environ.get("BENCH_TRACING_HITS", "2000"))
WARM_UP = 500
ROUNDS = int(os.environ.get("BENCH_TRACING_ROUNDS", "15"))
WORKERS = int(os.environ.get("BENCH_TRACING_WORKERS", "2"))
LOG_LEVEL = os.environ.get("BENCH_TRACING_LOG_LEVEL", "INFO")


@contextlib.asynccontextmanager
async def cache_hits() -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """The broker's app, tracing as the environment says (VideoDB mocked, the token cached
    after the first call); yields a function that makes one cache hit through it, in a task
    of its own, as uvicorn runs each request."""
    import respx
    from asgi_lifespan import LifespanManager
    from jose import jwt
    from pydantic import SecretStr

    from app.config import Settings
    from app.main import create_app
    from app.web.token_endpoint import TOKEN_PATH

    settings_class: Any = Settings  # the log level as a plain string
    settings = settings_class(
        _env_file=None,
        videodb_api_key=SecretStr("sk-bench-0123456789abcdef"),
        videodb_api="https://videodb.bench",
        auth_hs256_secret=SecretStr(SECRET),
        auth_audience="bench",
        log_level=LOG_LEVEL,
        rate_limit="100000000/minute",
    )
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
        async with LifespanManager(create_app(settings)) as manager:

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

                async def request() -> None:
                    await manager.app(scope, receive, send)

                # each request in a task of its own, with a copy of the context, as uvicorn
                await asyncio.create_task(request())
                assert statuses == [200], statuses

            yield hit


async def _worker(answers: TextIO) -> None:
    """Build the app once (tracing as the environment says); answer each line on stdin with
    one round's µs a hit on the loop and CPU µs a hit of the process."""
    async with cache_hits() as hit:
        print("ready", file=answers, flush=True)
        for _ in sys.stdin:
            for _ in range(WARM_UP):
                await hit()
            started, cpu = time.perf_counter(), time.process_time()
            for _ in range(HITS):
                await hit()
            wall = (time.perf_counter() - started) / HITS * 1e6
            used = (time.process_time() - cpu) / HITS * 1e6
            print(json.dumps([wall, used]), file=answers, flush=True)


def _start(tree: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "OTEL_"))}
    return subprocess.Popen(
        [sys.executable, __file__, "--worker"],
        env={**clean, **env, "PYTHONPATH": str(tree)},  # that tree's `app`, this harness
        cwd=tree,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _ready(name: str, worker: subprocess.Popen[str]) -> subprocess.Popen[str]:
    assert worker.stdout is not None
    if worker.stdout.readline().strip() != "ready":
        raise SystemExit(f"the {name} worker did not start")
    return worker


def _round(worker: subprocess.Popen[str]) -> tuple[float, float]:
    assert worker.stdin is not None
    assert worker.stdout is not None
    worker.stdin.write("go\n")
    worker.stdin.flush()
    wall, cpu = json.loads(worker.stdout.readline())
    return float(wall), float(cpu)


def main(refs: list[str]) -> None:
    """Start the receiver and the workers, run the rounds, print the medians."""
    from bench import worktrees  # here: a worker imports another tree's packages

    receiver = OtlpReceiver(keep=False)
    server = ThreadedServer(receiver).start()
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": server.url}
    with tempfile.TemporaryDirectory(prefix="tracing-cost-") as tmp:
        trees = {ref: worktrees.checkout(ref, Path(tmp)) for ref in refs}
        try:
            sources: dict[str, tuple[Path, dict[str, str]]] = {
                name: (REPO, {**otel, **env}) for name, env in IN_PROCESS.items()
            }
            for ref, tree in trees.items():
                for name, env in IN_PROCESS.items():
                    if name != OFF:
                        sources[f"{ref}: {name}"] = (tree, {**otel, **env})
            started = {
                name: [_start(tree, env) for _ in range(WORKERS)]
                for name, (tree, env) in sources.items()
            }
            workers = {name: [_ready(name, w) for w in each] for name, each in started.items()}
            results: dict[str, list[tuple[float, float]]] = {name: [] for name in workers}
            for turn in range(ROUNDS):
                order = list(workers)
                random.shuffle(order)
                for name in order:
                    results[name].append(_round(workers[name][turn % WORKERS]))
            for worker in (w for each in workers.values() for w in each):
                assert worker.stdin is not None
                worker.stdin.close()
                worker.wait()
        finally:
            worktrees.remove(trees.values())
            server.stop()
    off = [wall for wall, _ in results[OFF]]
    print(
        f"a cache hit in process, µs: median of {ROUNDS} rounds of {HITS} hits "
        f"(lowest-highest), difference from tracing off in the same round, CPU µs a hit"
    )
    for name, values in results.items():
        walls = [wall for wall, _ in values]
        differences = [wall - o for wall, o in zip(walls, off, strict=True)]
        print(
            f"{name:>40}: {statistics.median(walls):6.1f} ({min(walls):.1f}-{max(walls):.1f})"
            f"  {statistics.median(differences):+6.1f}"
            f"  cpu {statistics.median(cpu for _, cpu in values):6.1f}"
        )
    print(f"(the receiver got {receiver.bytes_received / 2**20:.1f} MiB of spans)")
    print(
        json.dumps({name: [[round(x, 2) for x in v] for v in vs] for name, vs in results.items()})
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")  # the parent's pipe
        with open(os.devnull, "w") as lines, contextlib.redirect_stdout(lines):  # the app's logs
            asyncio.run(_worker(answers))
    else:
        main(sys.argv[1:])
