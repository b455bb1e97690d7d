"""The one place that talks to VideoDB: mint an st- token, or raise a domain error."""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from dataclasses import dataclass

import httpx
import structlog
from pydantic import SecretStr

from app import __version__
from app.errors import (
    BrokerError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    UpstreamUnusable,
)
from app.fingerprint import fingerprint
from app.videodb_transport import VideoDBTransport

TOKEN_PATH = "/capture/session/token"  # noqa: S105 - a path
MAX_RESPONSE_BYTES = 64 * 1024
MAX_TOKEN_CHARS = 4096
DEFAULT_RETRY_AFTER = 5
MAX_CONNECTIONS = 100
MAX_HONOURED_RETRY_AFTER = 300  # seconds: the most of VideoDB's Retry-After we pass on
MAX_TIME_NUMBER = 2**53  # beyond it a time is no time (and float() of 10**400 overflows)
CLIENT_ID = f"videodb-token-broker/{__version__}"

log = structlog.get_logger(logger_name="app.videodb")


@dataclass(frozen=True, slots=True)
class MintedToken:
    """An st- token and the moment it stops working (epoch seconds)."""

    token: str
    expires_at: int


class _NoCookies(httpx.Cookies):
    """A jar that keeps nothing: the client is shared by every user's call."""

    def extract_cookies(self, response: httpx.Response) -> None:
        """Drop what VideoDB (or anything in front of it) tried to set."""


class CookielessClient(httpx.AsyncClient):
    """An httpx client whose cookie jar never fills.

    One client serves every user's VideoDB call, so a cookie set on one user's call must
    never be kept for another's. Not keeping it also saves the work httpx does per response
    to offer it to the standard library's cookie jar (about 30 µs, docs/performance.md).
    """

    @property
    def cookies(self) -> httpx.Cookies:
        return _NoCookies()

    @cookies.setter
    def cookies(self, _: object) -> None:
        pass  # httpx's constructor sets the jar; there is none to set


def build_http_client(timeout: float) -> httpx.AsyncClient:
    """The shared client for VideoDB, with explicit connect/read/write/pool timeouts, keeping
    no cookies, and sending HTTP/1.1 with httptools' parser over the event loop's own
    transports (app/videodb_transport.py).

    Ours is mounted for every URL rather than passed as `transport=`, which would make httpx
    ignore the proxy settings of the environment: a VideoDB that HTTPS_PROXY covers still goes
    through the proxy (httpx's own transport), as does one NO_PROXY exempts (httpx's default).
    """
    limits = httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=20)
    return CookielessClient(
        timeout=httpx.Timeout(timeout, connect=min(timeout, 3.0), pool=timeout),
        limits=limits,
        mounts={"all://": VideoDBTransport(limits=limits, max_body_bytes=MAX_RESPONSE_BYTES)},
        follow_redirects=False,
        headers={"User-Agent": CLIENT_ID},
    )


_DELAY_SECONDS = re.compile(r"[0-9]+", re.ASCII)


def retry_after_hint(value: str | None) -> int | None:
    """VideoDB's Retry-After in whole seconds (1 to the cap) when it is delay-seconds; else None.

    Only ASCII digits count (`str.isdigit` also takes '²' and other scripts' digits, which
    int() then refuses), and a number too long to be meant is the cap, never parsed.
    """
    text = value.strip() if value is not None else ""
    if not _DELAY_SECONDS.fullmatch(text):
        return None
    if len(text) > len(str(MAX_HONOURED_RETRY_AFTER)):
        return MAX_HONOURED_RETRY_AFTER
    return min(max(int(text), 1), MAX_HONOURED_RETRY_AFTER)


def time_number(value: object) -> float | None:
    """A JSON number of ordinary size as a float; None for anything else (bools, 10**400)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, int) and abs(value) > MAX_TIME_NUMBER:
        return None
    number = float(value)
    return number if math.isfinite(number) and abs(number) <= MAX_TIME_NUMBER else None


def true_expiry(sent_at: float, requested: int, expires_at: object, expires_in: object) -> int:
    """The earliest expiry any signal supports, so what we report is never too late.

    VideoDB's `expires_at` may be a float, in another unit (milliseconds), or disagree with
    `expires_in`. Whatever it says, a token is never taken to outlive the lifetime we asked
    for, counted from when the request was sent (our own clock).
    """
    candidates = [sent_at + requested]
    lifetime = time_number(expires_in)
    if lifetime is not None and lifetime > 0:
        candidates.append(sent_at + lifetime)
    absolute = time_number(expires_at)
    if absolute is not None:
        candidates.append(absolute)
    return math.floor(min(candidates))


class VideoDBClient:
    """Exchanges the server-held key for a session token bound to one user."""

    def __init__(
        self, http: httpx.AsyncClient, api_key: SecretStr, base_url: str, timeout: float
    ) -> None:
        self._http = http
        self._api_key = api_key
        self._url = httpx.URL(base_url + TOKEN_PATH)  # parsed once, not per call
        self._timeout = timeout
        # The client's explicit timeouts, carried by each request we build ourselves.
        self._timeouts = {"timeout": http.timeout.as_dict()}
        # Requests queue here, before httpx: httpcore's pool (still the one used when a proxy
        # applies) costs O(waiting x connections) per event in its assignment loop, which
        # stalled the loop with ~500 waiting requests (docs/performance.md).
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)

    async def mint(self, user_id: str, expires_in: int, budget: float | None = None) -> MintedToken:
        """Ask VideoDB for a token; raise UpstreamError/Unavailable/Timeout on any failure."""
        sent_at = time.time()
        try:
            async with asyncio.timeout(budget or self._timeout), self._slots:
                status, headers, body = await self._post(user_id, expires_in)
        except (TimeoutError, httpx.TimeoutException):
            log.warning("videodb_timeout", timeout_s=self._timeout)
            raise UpstreamTimeout("VideoDB did not answer in time; try again shortly.") from None
        except httpx.HTTPError as exc:
            log.warning("videodb_unreachable", error_type=type(exc).__name__)
            raise UpstreamUnavailable(
                "VideoDB could not be reached; try again shortly.", DEFAULT_RETRY_AFTER
            ) from None
        try:
            return self._interpret(status, headers, body, sent_at, expires_in)
        except BrokerError:
            raise
        except Exception as exc:
            # Whatever else an answer can make go wrong is an answer we cannot use.
            log.warning("videodb_unusable", problem=type(exc).__name__)
            raise UpstreamUnusable("VideoDB answered with something unusable.") from None

    async def _post(self, user_id: str, expires_in: int) -> tuple[int, httpx.Headers, bytes]:
        payload = json.dumps({"user_id": user_id, "expires_in": expires_in}).encode()
        request_headers = {
            "x-access-token": self._api_key.get_secret_value(),
            "Content-Type": "application/json",
            "x-videodb-client": CLIENT_ID,
            "User-Agent": CLIENT_ID,
        }
        # A request built here and sent as is: the client's per-call URL merging and header
        # copying were a measurable part of a cache miss (docs/performance.md).
        request = httpx.Request(
            "POST", self._url, content=payload, headers=request_headers, extensions=self._timeouts
        )
        resp = await self._http.send(request, stream=True)
        try:
            body = bytearray()
            async for chunk in resp.aiter_bytes():
                body += chunk
                if len(body) > MAX_RESPONSE_BYTES:
                    break
            return resp.status_code, resp.headers, bytes(body)
        finally:
            await resp.aclose()

    def _interpret(
        self, status: int, headers: httpx.Headers, body: bytes, sent_at: float, requested: int
    ) -> MintedToken:
        if status == 429 or status >= 500:
            hint = retry_after_hint(headers.get("retry-after"))
            retry = hint or DEFAULT_RETRY_AFTER
            log.warning("videodb_unavailable", status=status, retry_after_s=hint)
            raise UpstreamUnavailable(
                f"VideoDB is unavailable (HTTP {status}); retry after {retry} s.", retry, hint
            )
        if status in (401, 403):
            # VideoDB refused our key: an operator problem, never the end user's.
            log.error("videodb_refused_key", status=status)
            raise UpstreamError("VideoDB refused the broker's credentials; contact the operator.")
        if status != 200:
            log.warning("videodb_refused", status=status)
            raise UpstreamError(f"VideoDB refused the request (HTTP {status}).")
        if len(body) > MAX_RESPONSE_BYTES:
            log.warning("videodb_unusable", problem="oversized")
            raise UpstreamUnusable("VideoDB answered with an oversized body.")
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            log.warning("videodb_unusable", problem="not_json")
            raise UpstreamUnusable("VideoDB answered with something that is not JSON.") from None
        data = document.get("data") if isinstance(document, dict) else None
        if not isinstance(document, dict) or document.get("success") is not True:
            log.warning("videodb_unusable", problem="success_not_true")
            raise UpstreamUnusable("VideoDB reported a failure.")
        token = data.get("token") if isinstance(data, dict) else None
        if (
            not isinstance(token, str)
            or not token.startswith("st-")
            or len(token) > MAX_TOKEN_CHARS
            or not token.isprintable()
        ):
            log.warning("videodb_unusable", problem="no_session_token")
            raise UpstreamUnusable("VideoDB answered without a session token.")
        assert isinstance(data, dict)
        expires_at = true_expiry(sent_at, requested, data.get("expires_at"), data.get("expires_in"))
        if expires_at - time.time() < 1:
            log.warning("videodb_unusable", problem="already_expired", token=fingerprint(token))
            raise UpstreamUnusable("VideoDB answered with a token that has already expired.")
        return MintedToken(token=token, expires_at=expires_at)
