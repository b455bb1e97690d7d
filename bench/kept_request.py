"""What a request the sampler keeps costs when kept requests are rare: itself, and the
requests after it.

`python -m bench.kept_request`: for each variant, a worker process of its own drives
BENCH_KEPT_HITS cache hits (60,000 by default, after 2,000 to warm up) one at a time straight
through the broker's ASGI app (bench/tracing_cost.py's `cache_hits`), timing each. A hit is
kept when it ended spans. Printed per variant: the mean µs a hit (what throughput pays), the
median of the kept hits, and the median of the others by how many requests after the last
kept one they came (1, 2, 3-5, 6-20, 21-100, later). The variants:

- `dropped`: tracing on, `always_off`, for the baseline;
- `1 %`, `10 %`: `parentbased_traceidratio`;
- `unrelated work`: `always_off`, and after every hundredth hit about as much unrelated
  Python as a kept request adds (JSON encoding), counted as "kept": the trail any different
  work leaves on a warm interpreter, for scale.

Each variant runs BENCH_KEPT_RUNS times (2 by default), in turn; a figure is the median of
its runs. A process's figures move by a microsecond or so from one process to the next
(docs/performance.md), so read the trail within one variant, and the variants' means against
each other only to that precision.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.tracing_cost import cache_hits
from harness.otlp_receiver import OtlpReceiver
from harness.servers import ThreadedServer

REPO = Path(__file__).resolve().parents[1]
HITS = int(os.environ.get("BENCH_KEPT_HITS", "60000"))
RUNS = int(os.environ.get("BENCH_KEPT_RUNS", "2"))
WARM_UP = 2000
UNRELATED_EVERY = 100
UNRELATED_ROUNDS = 20  # JSON encodings: about what a kept request adds to its own time
# How many requests after the last kept one: the upper bound of each bucket
AFTER = (1, 2, 5, 20, 100)

_RATIO = {"BROKER_OTEL": "on", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio"}
VARIANTS: dict[str, dict[str, str]] = {
    "dropped": {"BROKER_OTEL": "on", "OTEL_TRACES_SAMPLER": "always_off"},
    "1 %": {**_RATIO, "OTEL_TRACES_SAMPLER_ARG": "0.01"},
    "10 %": {**_RATIO, "OTEL_TRACES_SAMPLER_ARG": "0.1"},
    "unrelated work": {
        "BROKER_OTEL": "on",
        "OTEL_TRACES_SAMPLER": "always_off",
        "BENCH_KEPT_UNRELATED": "1",
    },
}


def _unrelated() -> None:
    for n in range(UNRELATED_ROUNDS):
        json.dumps({"n": [n, str(n), n * 1.5, {"k": "v" * (n % 7)}]})


async def _worker() -> dict[str, float]:
    """One variant's figures: the mean, the kept hits' median, the trail's medians."""
    from app.observability import kept_spans

    ended = [0]
    end = kept_spans.KeptSpan.end

    def counted(span: kept_spans.KeptSpan) -> None:
        ended[0] += 1
        end(span)

    kept_spans.KeptSpan.end = counted  # type: ignore[method-assign,assignment]
    unrelated = bool(os.environ.get("BENCH_KEPT_UNRELATED"))
    kept: list[float] = []
    every: list[float] = []
    trail: dict[int, list[float]] = {}
    async with cache_hits() as hit:
        for _ in range(WARM_UP):
            await hit()
        since = 10**9
        for n in range(HITS):
            before = ended[0]
            started = time.perf_counter()
            await hit()
            extra = unrelated and n % UNRELATED_EVERY == UNRELATED_EVERY // 2
            if extra:
                _unrelated()
            took = (time.perf_counter() - started) * 1e6
            every.append(took)
            if extra or ended[0] != before:
                kept.append(took)
                since = 0
                continue
            since += 1
            bucket = next((bound for bound in AFTER if since <= bound), 0)
            trail.setdefault(bucket, []).append(took)
    figures = {"mean": statistics.mean(every), "kept": statistics.median(kept) if kept else 0.0}
    figures.update({f"after {bucket}": statistics.median(v) for bucket, v in trail.items()})
    return figures


def _run(env: dict[str, str], collector: str) -> dict[str, float]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "OTEL_"))}
    done = subprocess.run(
        [sys.executable, "-m", "bench.kept_request", "--worker"],
        env={**clean, **env, "OTEL_EXPORTER_OTLP_ENDPOINT": collector},
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if done.returncode:  # the worker's own traceback, not only its exit status
        raise SystemExit(f"the worker ({env}) failed:\n{done.stderr}")
    figures: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    return figures


def main() -> None:
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    server = ThreadedServer(OtlpReceiver(keep=False)).start()  # spans exported, as in production
    try:
        for _ in range(RUNS):
            for name, env in VARIANTS.items():
                runs[name].append(_run(env, server.url))
    finally:
        server.stop()
    columns = ["mean", "kept", *(f"after {b}" for b in AFTER), "after 0"]
    titles = ["mean", "kept", "next", "2nd", "3-5th", "6-20th", "21-100th", "later"]
    print(f"µs a cache hit in process, {HITS} hits a run, median of {RUNS} runs")
    print(f"{'':>16}" + "".join(f"{t:>10}" for t in titles))
    for name, measured in runs.items():
        cells = []
        for column in columns:
            values = [m[column] for m in measured if column in m]
            cells.append(f"{statistics.median(values):10.1f}" if values else f"{'-':>10}")
        print(f"{name:>16}" + "".join(cells))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        with open(os.devnull, "w") as lines, contextlib.redirect_stdout(lines):  # the app's logs
            figures = asyncio.run(_worker())
        print(json.dumps(figures))
    else:
        main()
