"""The error classes: each carries the contract's status and code, and none of them needs the
web layer (rendering is app/web/problems.py's business)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from app.errors import (
    BrokerError,
    CsrfFailed,
    InsufficientScope,
    InvalidRequest,
    InvalidToken,
    MissingToken,
    OriginNotAllowed,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    UpstreamUnusable,
)


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (MissingToken("x"), 401, "missing_token"),
        (InvalidToken("x"), 401, "invalid_token"),
        (InsufficientScope("x", "read"), 403, "insufficient_scope"),
        (CsrfFailed("x"), 403, "csrf_failed"),
        (OriginNotAllowed("x"), 403, "origin_not_allowed"),
        (InvalidRequest("x"), 422, "invalid_request"),
        (RateLimited("x"), 429, "rate_limited"),
        (UpstreamError("x"), 502, "upstream_error"),
        (UpstreamUnusable("x"), 502, "upstream_error"),
        (UpstreamUnavailable("x", 3), 503, "upstream_unavailable"),
        (UpstreamTimeout("x"), 504, "upstream_timeout"),
    ],
)
def test_each_error_carries_the_contracts_status_and_code(
    error: BrokerError, status: int, code: str
) -> None:
    assert (error.status, error.code) == (status, code)
    assert error.detail == "x"


def test_bearer_challenges_follow_rfc_6750() -> None:
    assert MissingToken("x").headers["WWW-Authenticate"] == 'Bearer realm="videodb-token-broker"'
    invalid = InvalidToken("token has expired").headers["WWW-Authenticate"]
    assert 'error="invalid_token"' in invalid
    assert 'error_description="token has expired"' in invalid
    scope = InsufficientScope("lacks a scope", "capture write").headers["WWW-Authenticate"]
    assert 'error="insufficient_scope"' in scope
    assert 'scope="capture write"' in scope


@pytest.mark.parametrize(("asked", "sent"), [(0, "1"), (-5, "1"), (7, "7")])
def test_retry_after_is_always_a_whole_second_or_more(asked: int, sent: str) -> None:
    error = UpstreamUnavailable("down", asked, upstream_hint=None)
    assert error.headers["Retry-After"] == sent
    assert error.retry_after == int(sent)


def test_the_errors_import_nothing_of_the_web_layer() -> None:
    code = "import sys, app.errors; print(sorted(m for m in sys.modules if m.startswith('app.')))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "app.web" not in loaded
    assert (
        "fastapi"
        not in subprocess.run(
            [sys.executable, "-c", "import sys, app.errors; print(sorted(sys.modules))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
