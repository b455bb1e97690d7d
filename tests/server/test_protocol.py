"""The server protocol's own refusals are whole HTTP responses carrying a problem body, and
every broker server runs with it (its behaviour on real sockets is in
tests/integration/test_hostile_connections.py)."""

from __future__ import annotations

import json
from http import HTTPStatus

from app.server.protocol import (
    SERVER_OPTIONS,
    GuardedHttpToolsProtocol,
    refusal,
)


def test_a_refusal_is_a_whole_problem_response_that_closes_the_connection() -> None:
    raw = refusal(HTTPStatus.REQUEST_TIMEOUT, "request_timeout", "too slow", "abc123")
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0] == "HTTP/1.1 408 Request Timeout"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["Content-Type"] == "application/problem+json"
    assert int(headers["Content-Length"]) == len(body)
    assert headers["Connection"] == "close"
    assert headers["X-Request-ID"] == "abc123"
    assert headers["X-Content-Type-Options"] == "nosniff"
    problem = json.loads(body)
    assert problem["status"] == 408
    assert problem["code"] == "request_timeout"
    assert problem["request_id"] == "abc123"


def test_every_server_runs_the_guarded_protocol_without_websockets() -> None:
    assert SERVER_OPTIONS["http"] is GuardedHttpToolsProtocol
    assert SERVER_OPTIONS["ws"] == "none"
    assert SERVER_OPTIONS["proxy_headers"] is False  # BROKER_TRUSTED_PROXIES decides
