"""Reading VideoDB's answers: capture sessions as the spec and some versions give them."""

from __future__ import annotations

import httpx
import pytest

from app.errors import NotFound, UpstreamError, UpstreamUnavailable, UpstreamUnusable
from app.videodb.answers import Answer, created_session_from, session_record_from


def _answer(status: int, body: bytes) -> Answer:
    return Answer(status, httpx.Headers(), body)


@pytest.mark.parametrize(
    "body",
    [
        b'{"success": true, "data": {"session_id": "cap-1", "status": "created"}}',
        b'{"success": true, "data": {"id": "cap-1"}}',
    ],
)
def test_a_created_session_under_either_name(body: bytes) -> None:
    session = created_session_from(_answer(200, body))
    assert (session.session_id, session.status) == ("cap-1", "created")
    assert created_session_from(_answer(201, body)).session_id == "cap-1"


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (200, b'{"success": true, "data": {"session_id": "../token"}}', UpstreamUnusable),
        (200, b'{"success": true, "data": {"session_id": 12}}', UpstreamUnusable),
        (200, b'{"success": true, "data": []}', UpstreamUnusable),
        (200, b"[" * 30_000 + b"]" * 30_000, UpstreamUnusable),
        (400, b'{"success": false}', UpstreamError),
        (401, b"", UpstreamError),
        (503, b"", UpstreamUnavailable),
    ],
)
def test_an_unusable_creation_answer_is_a_domain_error(
    status: int, body: bytes, error: type[Exception]
) -> None:
    with pytest.raises(error):
        created_session_from(_answer(status, body))


def test_a_session_videodb_does_not_know_is_not_found() -> None:
    with pytest.raises(NotFound):
        session_record_from(_answer(404, b'{"success": false}'))
    record = session_record_from(_answer(200, b'{"success": true, "data": {"status": "x"}}'))
    assert record == {"status": "x"}
