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
from typing import Any

import respx
import yaml

from tests.conftest import Build
from tests.fakes.redis_server import require_binary

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
RULES_DIR = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "videodb-token-broker.json"
OPERATIONS = DEPLOY.parent / "docs" / "operations.md"
RUNBOOKS = "https://github.com/your-org/videodb-token-broker/blob/main/docs/operations.md"
SUFFIXES = ("_bucket", "_count", "_sum", "_created")


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("promtool"), *args],
        cwd=RULES_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((RULES_DIR / "alerts.yaml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in _rules() if "alert" in rule}


def test_the_rules_are_valid() -> None:
    checked = _promtool("check", "rules", "alerts.yaml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in checked.stdout


def test_each_alert_fires_when_it_should_and_only_then() -> None:
    tested = _promtool("test", "rules", "alerts.test.yaml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load((RULES_DIR / "alerts.test.yaml").read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    # each alert has a case that fires it and one that must not
    assert fired == set(_alerts())
    assert quiet == set(_alerts())


def _anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a page's headings."""
    headings = re.findall(r"^#+ (.+)$", markdown, re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_each_alert_has_a_runbook_in_the_operations_page() -> None:
    anchors = _anchors(OPERATIONS.read_text())
    for name, rule in _alerts().items():
        assert rule["labels"]["severity"] in {"page", "ticket"}, name
        url = rule["annotations"]["runbook_url"]
        page, _, anchor = url.partition("#")
        assert page == RUNBOOKS, name
        assert anchor == name.lower(), name  # its own runbook: #### <AlertName>
        assert anchor in anchors, name


def test_the_operations_table_names_exactly_the_alerts_of_the_rules() -> None:
    text = OPERATIONS.read_text()
    section = text[text.index("## What to alert on") :]
    table = section[: section.index("### Runbooks")]
    rows = re.findall(r"^\| `(\w+)` \| (page|ticket) \|", table, re.M)
    assert len(rows) == len(set(rows))
    assert dict(rows) == {name: rule["labels"]["severity"] for name, rule in _alerts().items()}


def test_every_dashboard_panel_queries_something() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "videodb-token-broker"
    titles = [panel["title"] for panel in dashboard["panels"]]
    assert len(titles) == len(set(titles))
    rows = [panel["title"] for panel in dashboard["panels"] if panel["type"] == "row"]
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert all("broker_" in target["expr"] for target in panel["targets"]), panel["title"]
    for wanted in ("Cache hit share", "VideoDB latency", "circuit", "Redis", "Signing keys"):
        assert any(wanted in title for title in titles), wanted
    assert rows == ["Availability", "Live capture (BROKER_CAPTURE_LIVE=on)"]
    for metric in (
        "broker_capture_webhooks_total",
        "broker_capture_pipeline_starts_total",
        "broker_capture_live_events_total",
        "broker_capture_videodb_sockets",
        "broker_capture_open_feeds",
        "broker_ready",
        "broker_build_info",
    ):
        assert metric in DASHBOARD.read_text(), metric


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
