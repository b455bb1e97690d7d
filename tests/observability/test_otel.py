"""What `BROKER_OTEL=on` sets up: the export wrapper and who may continue a trace."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import structlog
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from app.observability.otel import Tracing, _OncePerIncident


class _Flaky(SpanExporter):
    def __init__(self) -> None:
        self.results: list[SpanExportResult | Exception] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self.results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result


def test_failures_are_logged_once_per_incident_and_the_recovery_once() -> None:
    inner = _Flaky()
    ok, failed = SpanExportResult.SUCCESS, SpanExportResult.FAILURE
    inner.results = [ok, failed, failed, RuntimeError("exporter bug"), failed, ok, ok, failed]
    exporter = _OncePerIncident(inner, "collector.internal")
    with structlog.testing.capture_logs() as logs:
        results = [exporter.export([]) for _ in range(8)]
    assert results == [ok, failed, failed, failed, failed, ok, ok, failed]
    assert [entry["event"] for entry in logs] == [
        "trace_export_failed",
        "trace_export_recovered",
        "trace_export_failed",
    ]
    assert logs[0]["collector"] == "collector.internal"


@pytest.mark.parametrize(
    ("trusted", "peer", "continues"),
    [
        (["127.0.0.1"], "127.0.0.1", True),
        (["10.0.0.0/8"], "10.1.2.3", True),
        (["10.0.0.0/8"], "192.168.1.1", False),
        ([], "127.0.0.1", False),
        (["10.0.0.0/8"], "not-an-address", False),
    ],
)
def test_only_a_trusted_proxy_may_continue_a_trace(
    trusted: list[str], peer: str, continues: bool
) -> None:
    setup = Tracing(trusted)
    try:
        assert setup.trusts({"type": "http", "client": (peer, 5000)}) is continues
        assert not setup.trusts({"type": "http", "client": None})
    finally:
        setup.provider.shutdown()
