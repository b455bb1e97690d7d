"""Prometheus metrics, prefixed broker_, correct across `--workers N` (multiprocess mode)."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

from app import __version__

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
TOKEN_SOURCES = ("cache", "upstream", "coalesced")

HTTP_REQUESTS = Counter(
    "broker_http_requests_total",
    "HTTP requests by route, method and status",
    ["route", "method", "status"],
)
HTTP_DURATION = Histogram(
    "broker_http_request_duration_seconds",
    "Time to answer, by route",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
TOKENS_ISSUED = Counter(
    "broker_tokens_issued_total", "Tokens handed out, by source (cache, upstream)", ["source"]
)
# Resolved once: every source shows from the start (at 0), and the hot path skips labels().
TOKENS_BY_SOURCE = {source: TOKENS_ISSUED.labels(source) for source in TOKEN_SOURCES}
UPSTREAM_LATENCY = Histogram(
    "broker_upstream_latency_seconds",
    "Latency of one VideoDB call, by operation (token, create_capture_session, "
    "get_capture_session)",
    ["operation"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
UPSTREAM_OUTCOMES = Counter(
    "broker_upstream_requests_total",
    "VideoDB calls by operation and outcome (ok, unavailable, unusable, key_refused, refused, "
    "timeout, circuit_open, not_found, cancelled, other)",
    ["operation", "outcome"],
)
CAPTURE_SESSIONS = Counter(
    "broker_capture_sessions_total",
    "Capture session creations by outcome (created, or the problem code that refused it)",
    ["outcome"],
)
IDENTITY_FAILURES = Counter(
    "broker_identity_failures_total",
    "Refused credentials by identity provider ('none' before one is known) and reason",
    ["provider", "reason"],
)
RATE_LIMITED = Counter("broker_rate_limited_total", "Requests refused by the per-user limit")
CONNECTIONS_REFUSED = Counter(
    "broker_connections_refused_total",
    "Connections ended before their request reached the app, by reason",
    ["reason"],
)
CACHE_ENTRIES = Gauge(
    "broker_cache_entries", "Tokens held for reuse in this process", multiprocess_mode="livesum"
)
CIRCUIT_STATE = Gauge(
    "broker_upstream_circuit_state",
    "VideoDB circuit: 0 closed, 1 half-open, 2 open",
    multiprocess_mode="livemax",
)
KEY_REFRESHES = Counter(
    "broker_signing_key_refreshes_total",
    "JWKS fetches by identity provider, trigger and outcome",
    ["provider", "trigger", "outcome"],
)
KEYS_LOADED_AT = Gauge(
    "broker_signing_keys_loaded_timestamp_seconds",
    "When each provider's signing keys were last fetched successfully (epoch seconds)",
    ["provider"],
    multiprocess_mode="livemin",
)
REDIS_UP = Gauge(
    "broker_redis_up",
    "1 when the shared Redis answers (or none is configured), else 0",
    multiprocess_mode="livemin",
)
REDIS_COMMANDS_REFUSED = Counter(
    "broker_redis_commands_refused_total",
    "Redis commands Redis answered with an error (a key of another type, an ACL): the call "
    "fell back to the process",
    ["command"],
)
# Set by each /readyz and /metrics: an alert can then tell 'scraped but not ready' from
# serving (up == 1 alone says only that the process answers).
READY = Gauge(
    "broker_ready",
    "1 when this process would answer /readyz with 200, else 0",
    multiprocess_mode="livemax",
)
BUILD_INFO = Gauge(
    "broker_build_info",
    "Always 1: the broker's version and the Python running it, as labels",
    ["version", "python"],
    multiprocess_mode="livemax",
)
BUILD_INFO.labels(__version__, platform.python_version()).set(1)

# Live capture (BROKER_CAPTURE_LIVE=on)
LIVE_WEBHOOKS = Counter(
    "broker_capture_webhooks_total",
    "VideoDB's webhooks by what the broker did after reading the session again",
    ["outcome"],
)
PIPELINE_STARTS = Counter(
    "broker_capture_pipeline_starts_total",
    "AI steps (and their socket) started, skipped or failed, by step kind",
    ["step", "outcome"],
)
LIVE_EVENTS = Counter(
    "broker_capture_live_events_total",
    "Messages from VideoDB's sockets relayed to feeds or dropped",
    ["outcome"],
)
VIDEODB_SOCKETS = Gauge(
    "broker_capture_videodb_sockets", "Open VideoDB WebSockets", multiprocess_mode="livesum"
)
OPEN_FEEDS = Gauge(
    "broker_capture_open_feeds", "Owners' live feeds open", multiprocess_mode="livesum"
)


def render() -> tuple[bytes, str]:
    """The exposition text, summed across worker processes when there are several."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_request_series: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def route_template(scope: Scope, routes: Sequence[BaseRoute] = ()) -> str:
    """The route template a request is counted under: its matched route's, else the route
    its path would reach (a CORS preflight is answered before routing), else 'unmatched'."""
    route = scope.get("route")
    if route is None and scope["method"] == "OPTIONS":
        route = next((r for r in routes if r.matches(scope)[0] is not Match.NONE), None)
    return getattr(route, "path", "unmatched")


def record_request(
    scope: Scope, status: int, seconds: float, routes: Sequence[BaseRoute] = ()
) -> None:
    """Count and time one HTTP request by its route template (bounded label values)."""
    template = route_template(scope, routes)
    method = scope["method"] if scope["method"] in _KNOWN_METHODS else "other"
    key = (template, method, status)
    series = _request_series.get(key)
    if series is None:  # labels() takes a lock and builds a tuple: look each series up once
        series = (
            HTTP_REQUESTS.labels(template, method, str(status)),
            HTTP_DURATION.labels(template),
        )
        _request_series[key] = series
    series[0].inc()
    series[1].observe(seconds)
