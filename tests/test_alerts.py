"""deploy/prometheus/alerts.yaml: valid rules, each alert unit-tested with promtool (it fires
on a series that should fire it and stays quiet on one that should not), and every broker
metric the rules name is one a running broker exports, so a renamed metric cannot silently
blank an alert."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import respx
import yaml

from tests.conftest import Build
from tests.fakes.redis_server import require_binary

RULES_DIR = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"
SUFFIXES = ("_bucket", "_count", "_sum", "_created")


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("promtool"), *args],
        cwd=RULES_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_rules_are_valid() -> None:
    checked = _promtool("check", "rules", "alerts.yaml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 9 rules found" in checked.stdout


def test_each_alert_fires_when_it_should_and_only_then() -> None:
    tested = _promtool("test", "rules", "alerts.test.yaml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    alerts = {
        rule["alert"]
        for group in yaml.safe_load((RULES_DIR / "alerts.yaml").read_text())["groups"]
        for rule in group["rules"]
    }
    cases = (RULES_DIR / "alerts.test.yaml").read_text()
    for alert in alerts:  # each alert has a firing case and a quiet one
        assert cases.count(f"alertname: {alert}") >= 2, alert


async def test_every_metric_the_rules_name_is_exported(
    app_client: Build, network: respx.MockRouter
) -> None:
    client = await app_client()
    await client.post("/v1/capture/session/token")  # a request, so labelled series exist
    exported = {
        line.split()[2]
        for line in (await client.get("/metrics")).text.splitlines()
        if line.startswith("# TYPE ")
    }
    rules = (RULES_DIR / "alerts.yaml").read_text()
    named = set(re.findall(r"\b(broker_[a-z_]+)", rules))
    assert named  # the rules do name broker metrics
    for name in named:
        base = next((name.removesuffix(s) for s in SUFFIXES if name.endswith(s)), name)
        assert base in exported or base.removesuffix("_total") in exported, name
