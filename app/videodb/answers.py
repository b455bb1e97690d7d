"""Reading VideoDB's answers: every status and body mapped to a result or a domain error."""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field

import httpx
import structlog

from app.errors import (
    NotFound,
    UpstreamKeyRefused,
    UpstreamRefused,
    UpstreamUnavailable,
    UpstreamUnusable,
)
from app.observability.fingerprints import fingerprint
from app.timestamps import plausible_seconds

MAX_RESPONSE_BYTES = 64 * 1024
MAX_TOKEN_CHARS = 4096
DEFAULT_RETRY_AFTER = 5
MAX_RETRY_AFTER_PASSED_ON = 300  # seconds: the most of VideoDB's Retry-After we pass on
# What a capture session id may be: it goes into the Location header and VideoDB's URLs.
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,128}", re.ASCII)

log = structlog.get_logger(logger_name=__name__)


@dataclass(frozen=True, slots=True)
class Answer:
    """VideoDB's answer to one call: status, headers and at most MAX_RESPONSE_BYTES + 1 of body."""

    status: int
    headers: httpx.Headers
    body: bytes


@dataclass(frozen=True, slots=True)
class MintedToken:
    """An st- token and the moment it stops working (epoch seconds); never shown (repr)."""

    token: str = field(repr=False)
    expires_at: int


@dataclass(frozen=True, slots=True)
class CaptureSession:
    """A capture session VideoDB created."""

    session_id: str
    status: str
    collection_id: str


_DELAY_SECONDS = re.compile(r"[0-9]+", re.ASCII)


def retry_after_hint(value: str | None) -> int | None:
    """VideoDB's Retry-After in whole seconds (1 to the cap) when it is delay-seconds; else None.

    Only ASCII digits count (`str.isdigit` also takes '²' and other scripts' digits, which
    int() then refuses), and a number too long to be meant is the cap, never parsed.
    """
    text = value.strip() if value is not None else ""
    if not _DELAY_SECONDS.fullmatch(text):
        return None
    if len(text) > len(str(MAX_RETRY_AFTER_PASSED_ON)):
        return MAX_RETRY_AFTER_PASSED_ON
    return min(max(int(text), 1), MAX_RETRY_AFTER_PASSED_ON)


def true_expiry(sent_at: float, requested: int, expires_at: object, expires_in: object) -> int:
    """The earliest expiry any signal supports, so what we report is never too late.

    VideoDB's `expires_at` may be a float, in another unit (milliseconds), or disagree with
    `expires_in`. Whatever it says, a token is never taken to outlive the lifetime we asked
    for, counted from when the request was sent (our own clock).
    """
    candidates = [sent_at + requested]
    lifetime = plausible_seconds(expires_in)
    if lifetime is not None and lifetime > 0:
        candidates.append(sent_at + lifetime)
    absolute = plausible_seconds(expires_at)
    if absolute is not None:
        candidates.append(absolute)
    return math.floor(min(candidates))


def _raise_for_status(answer: Answer, expected: int = 200) -> None:
    status = answer.status
    if status == 429 or status >= 500:
        hint = retry_after_hint(answer.headers.get("retry-after"))
        retry = hint or DEFAULT_RETRY_AFTER
        log.warning("videodb_unavailable", status=status, retry_after_s=hint)
        raise UpstreamUnavailable(
            f"VideoDB is unavailable (HTTP {status}); retry after {retry} s.", retry, hint
        )
    if status in (401, 403):
        # VideoDB refused our key: an operator problem, never the end user's.
        log.error("videodb_refused_key", status=status)
        raise UpstreamKeyRefused("VideoDB refused the broker's credentials; contact the operator.")
    if status != expected:
        log.warning("videodb_refused", status=status)
        raise UpstreamRefused(f"VideoDB refused the request (HTTP {status}).")


def _data(answer: Answer) -> dict[str, object]:
    """The `data` object of a successful answer, or UpstreamUnusable."""
    if len(answer.body) > MAX_RESPONSE_BYTES:
        log.warning("videodb_unusable", problem="oversized")
        raise UpstreamUnusable("VideoDB answered with an oversized body.")
    try:
        document = json.loads(answer.body)
    except (ValueError, RecursionError):
        log.warning("videodb_unusable", problem="not_json")
        raise UpstreamUnusable("VideoDB answered with something that is not JSON.") from None
    if not isinstance(document, dict) or document.get("success") is not True:
        log.warning("videodb_unusable", problem="success_not_true")
        raise UpstreamUnusable("VideoDB reported a failure.")
    data = document.get("data")
    if not isinstance(data, dict):
        log.warning("videodb_unusable", problem="no_data")
        raise UpstreamUnusable("VideoDB answered without data.")
    return data


def token_from(answer: Answer, sent_at: float, requested: int) -> MintedToken:
    """The token of an answer to POST /capture/session/token."""
    _raise_for_status(answer)
    data = _data(answer)
    token = data.get("token")
    if (
        not isinstance(token, str)
        or not token.startswith("st-")
        or len(token) > MAX_TOKEN_CHARS
        or not token.isprintable()
    ):
        log.warning("videodb_unusable", problem="no_session_token")
        raise UpstreamUnusable("VideoDB answered without a session token.")
    expires_at = true_expiry(sent_at, requested, data.get("expires_at"), data.get("expires_in"))
    if expires_at - time.time() < 1:
        log.warning("videodb_unusable", problem="already_expired", token=fingerprint(token))
        raise UpstreamUnusable("VideoDB answered with a token that has already expired.")
    return MintedToken(token=token, expires_at=expires_at)


def created_session_from(answer: Answer) -> CaptureSession:
    """The session of an answer to POST /collection/{id}/capture/session."""
    if answer.status == 201:
        answer = Answer(200, answer.headers, answer.body)  # a 201 is as good as the 200 specced
    _raise_for_status(answer)
    data = _data(answer)
    session_id = data.get("session_id", data.get("id"))  # some versions name it `id`
    if not isinstance(session_id, str) or not SESSION_ID.fullmatch(session_id):
        log.warning("videodb_unusable", problem="no_session_id")
        raise UpstreamUnusable("VideoDB answered without a usable capture session id.")
    # The session exists now: an odd status or collection (a lone surrogate, say, which no
    # JSON encoder writes) must not turn its creation into an error; ours stand in for them.
    return CaptureSession(
        session_id=session_id,
        status=_printable(data.get("status"), "created"),
        collection_id=_printable(data.get("collection_id"), ""),
    )


def _printable(value: object, otherwise: str) -> str:
    return value if isinstance(value, str) and value.isprintable() else otherwise


def session_record_from(answer: Answer) -> dict[str, object]:
    """VideoDB's record of a capture session; NotFound when VideoDB knows no such session."""
    if answer.status == 404:
        raise NotFound("No such capture session.")
    _raise_for_status(answer)
    return _data(answer)


def data_from(answer: Answer, accepted: tuple[int, ...] = (200,)) -> dict[str, object]:
    """The `data` of any other call's answer (the AI steps, the socket, the export)."""
    if answer.status in accepted:
        answer = Answer(200, answer.headers, answer.body)
    return _checked_data(answer)


def _checked_data(answer: Answer) -> dict[str, object]:
    _raise_for_status(answer)
    return _data(answer)


def websocket_url_from(answer: Answer) -> str:
    """The URL of a new capture WebSocket: itself a credential, never logged or returned."""
    url = data_from(answer).get("websocket_url")
    if not isinstance(url, str) or not url.startswith(("wss://", "ws://")) or len(url) > 4096:
        log.warning("videodb_unusable", problem="no_websocket_url")
        raise UpstreamUnusable("VideoDB answered without a WebSocket URL.")
    return url
