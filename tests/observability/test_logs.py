"""Every log line is JSON and carries fingerprints, never a key, a session token or a JWT."""

from __future__ import annotations

import io
import json
import logging
import sys
from datetime import UTC, datetime, timedelta

import pytest
import structlog

from app.observability.fingerprints import fingerprint
from app.observability.logs import bind_request_id, configure_logging, unbind_request_id

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


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_lines_written_during_a_request_carry_its_id_and_no_other(
    fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", fmt)
    ours = structlog.get_logger(logger_name="app.test.ids")
    token = bind_request_id("req-0123456789")
    ours.info("inside")
    logging.getLogger("uvicorn.error").warning("library, inside")
    ours.info("explicit", request_id="given-0123456789")  # a field passed wins
    unbind_request_id(token)
    ours.info("after")
    logging.getLogger("uvicorn.error").warning("library, after")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5
    if fmt == "json":
        ids = [json.loads(line).get("request_id") for line in lines]
        assert ids == ["req-0123456789", "req-0123456789", "given-0123456789", None, None]
    else:
        assert ["req-0123456789" in line for line in lines] == [True, True, False, False, False]


def test_json_timestamps_are_iso_8601_utc_with_a_z(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "json")
    before = datetime.now(UTC)
    structlog.get_logger(logger_name="app.test.time").info("ours")
    logging.getLogger("uvicorn.error").warning("library")
    after = datetime.now(UTC)
    for line in _lines(capsys):
        stamp = line["timestamp"]
        assert isinstance(stamp, str)
        assert stamp.endswith("Z")
        assert "T" in stamp
        moment = datetime.fromisoformat(stamp)
        assert moment.utcoffset() == timedelta(0)
        assert before <= moment <= after
