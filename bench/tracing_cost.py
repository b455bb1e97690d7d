"""Figure 5 of `make bench`: what tracing costs a cache hit, side by side in one run.

Three brokers alike but for tracing (off; on with the default sampler, every trace kept;
on with 10 % of traces sampled), each exporting to an OTLP receiver on loopback, measured in
alternating wrk rounds; medians, and each one's throughput as a ratio to the broker with
tracing off in the same round.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import httpx

from harness.broker_process import BrokerProcess
from harness.otlp_receiver import OtlpReceiver
from harness.servers import ThreadedServer

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
}

Wrk = Callable[..., dict[str, float]]
WrkScript = Callable[[Path, str, str, dict[str, str]], Path]


def tracing_cost(
    settings: dict[str, str], bearer: str, path: str, rounds: int, wrk: Wrk, script: WrkScript
) -> dict[str, dict[str, float]]:
    """Median req/s, p99 and ratio to tracing off, for each variant; MiB the receiver got."""
    receiver = OtlpReceiver(keep=False)  # a collector's work is not the broker's: none done here
    server = ThreadedServer(receiver).start()
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": server.url}
    brokers = {
        name: BrokerProcess({**settings, **otel, **extra}).wait_ready()
        for name, extra in VARIANTS.items()
    }
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            headers = {"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"}
            post = script(Path(tmp), "post.lua", "{}", headers)
            for broker in brokers.values():
                httpx.post(broker.url + path, headers={"Authorization": f"Bearer {bearer}"})
                wrk(broker.url + path, post)  # warm-up, not counted
            for _ in range(rounds):
                for name, broker in brokers.items():
                    runs[name].append(wrk(broker.url + path, post))
    finally:
        for broker in brokers.values():
            broker.terminate()
        server.stop()
    figures: dict[str, dict[str, float]] = {}
    for name, measured in runs.items():
        ratios = [m["rps"] / off["rps"] for m, off in zip(measured, runs["off"], strict=True)]
        figures[name] = {
            "rps": statistics.median(m["rps"] for m in measured),
            "p99_ms": statistics.median(m["p99_ms"] for m in measured),
            "ratio": statistics.median(ratios),
        }
    figures["receiver"] = {"mib": receiver.bytes_received / 2**20}
    return figures
