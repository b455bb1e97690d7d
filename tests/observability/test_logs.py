"""Every log line is JSON and carries fingerprints, never a key, a session token or a JWT."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest
import structlog

from app.observability.fingerprints import fingerprint
from app.observability.logs import configure_logging

KEY = "sk-logging-test-0123456789"
SESSION = "st-abcdefghijklmnop"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


def _lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]


def test_our_lines_and_library_lines_are_scrubbed(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "json")
    structlog.get_logger(logger_name="app.test").info(
        "something", detail=f"key {KEY}", tokens=[SESSION, {"jwt": JWT}]
    )
    try:
        raise ValueError(f"upstream said: bad key {KEY}")
    except ValueError:
        logging.getLogger("uvicorn.error").exception("Exception in ASGI application")
    lines = _lines(capsys)
    text = json.dumps(lines)
    assert len(lines) == 2
    for secret in (KEY, SESSION, JWT):
        assert secret not in text
        assert fingerprint(secret) in text
    assert lines[0]["logger"] == "app.test"
    assert lines[1]["logger"] == "uvicorn.error"


def test_library_lines_follow_stdout_when_a_host_swaps_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A host that replaces stdout after start-up (a test runner's capture, then closed)
    still gets library lines, uvicorn's among them, on the stdout of the moment: none is
    written to the closed stream, which logging would report as an error on stderr."""
    first = io.StringIO()
    monkeypatch.setattr(sys, "stdout", first)
    configure_logging("INFO", "json")
    first.close()
    second = io.StringIO()
    monkeypatch.setattr(sys, "stdout", second)
    errors = io.StringIO()
    monkeypatch.setattr(sys, "stderr", errors)
    logging.getLogger("uvicorn.error").info("Finished server process [%d]", 42)
    lines = [json.loads(line) for line in second.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["Finished server process [42]"]
    assert errors.getvalue() == ""


def test_level_filters_our_lines(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("WARNING", "json")
    structlog.get_logger(logger_name="app.test.level").info("quiet")
    structlog.get_logger(logger_name="app.test.level").warning("loud")
    assert [line["event"] for line in _lines(capsys)] == ["loud"]
