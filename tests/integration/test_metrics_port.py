"""BROKER_METRICS_PORT: /metrics on a port of its own, as `token-broker serve` runs it."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from harness.broker_process import REPO, BrokerProcess, clean_env, free_port
from tests.integration.conftest import API_KEY, AUDIENCE

pytestmark = pytest.mark.integration

SETTINGS = {
    "VIDEO_DB_API_KEY": API_KEY,
    "VIDEO_DB_API": "http://127.0.0.1:9",  # never called here
    "BROKER_AUTH_AUDIENCE": AUDIENCE,
    "BROKER_AUTH_HS256_SECRET": "s" * 40,
}


@pytest.mark.parametrize("workers", ["1", "2"])
def test_metrics_answer_on_their_port_alone(workers: str) -> None:
    metrics_port = free_port()
    broker = BrokerProcess(
        {**SETTINGS, "BROKER_METRICS_PORT": str(metrics_port)}, args=("--workers", workers)
    ).wait_ready()
    metrics = f"http://127.0.0.1:{metrics_port}"
    try:
        scraped = httpx.get(metrics + "/metrics")
        assert scraped.status_code == 200
        assert "broker_ready 1.0" in scraped.text
        assert "broker_build_info{" in scraped.text
        # the main port, which a proxy publishes, has no /metrics; the metrics port nothing else
        for url in (broker.url + "/metrics", metrics + "/healthz", metrics + "/readyz"):
            refused = httpx.get(url)
            assert refused.status_code == 404, url
            assert refused.json()["code"] == "not_found"
        assert httpx.get(broker.url + "/healthz").status_code == 200
    finally:
        assert broker.terminate() == 0


def test_the_metrics_port_must_differ_from_the_serving_port() -> None:
    port = str(free_port())
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--port", port],
        env={**clean_env(**SETTINGS, BROKER_METRICS_PORT=port), "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"BROKER_METRICS_PORT: must differ from the serving port ({port})" in result.stderr
