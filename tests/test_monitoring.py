"""deploy/prometheus/alerts.yaml and deploy/grafana/videodb-token-broker.json: valid rules,
each alert unit-tested with promtool (it fires on a series that should fire it and stays
quiet on one that should not), a dashboard whose every panel queries something, and every
broker metric either names is one a running broker exports, so a renamed metric cannot
silently blank an alert or a panel."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import respx
import yaml

from tests.conftest import Build
from tests.fakes.redis_server import require_binary

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
RULES_DIR = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "videodb-token-broker.json"
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


def test_every_dashboard_panel_queries_something() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "videodb-token-broker"
    titles = [panel["title"] for panel in dashboard["panels"]]
    assert len(titles) == len(set(titles))
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        assert all("broker_" in target["expr"] for target in panel["targets"]), panel["title"]
    for wanted in ("Cache hit share", "VideoDB latency", "circuit", "Redis", "Signing keys"):
        assert any(wanted in title for title in titles), wanted


async def test_every_metric_the_rules_and_the_dashboard_name_is_exported(
    app_client: Build, network: respx.MockRouter
) -> None:
    client = await app_client()
    await client.post("/v1/capture/session/token")  # a request, so labelled series exist
    exported = {
        line.split()[2]
        for line in (await client.get("/metrics")).text.splitlines()
        if line.startswith("# TYPE ")
    }
    for source in (RULES_DIR / "alerts.yaml", DASHBOARD):
        named = set(re.findall(r"\b(broker_[a-z_]+)", source.read_text()))
        assert named, source  # each does name broker metrics
        _assert_exported(named, exported)


def _assert_exported(named: set[str], exported: set[str]) -> None:
    for name in named:
        base = next((name.removesuffix(s) for s in SUFFIXES if name.endswith(s)), name)
        assert base in exported or base.removesuffix("_total") in exported, name
