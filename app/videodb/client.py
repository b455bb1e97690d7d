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
from app.observability.fingerprints import fingerprint
from app.timestamps import plausible_seconds

TOKEN_PATH = "/capture/session/token"  # noqa: S105 - a path
MAX_RESPONSE_BYTES = 64 * 1024
MAX_TOKEN_CHARS = 4096
DEFAULT_RETRY_AFTER = 5
# VideoDB calls at once, per process; the rest queue. Past about this many, httpcore's pool
# costs more CPU per call than the call itself (docs/performance.md).
MAX_CONNECTIONS = 16
MAX_RETRY_AFTER_PASSED_ON = 300  # seconds: the most of VideoDB's Retry-After we pass on
CLIENT_ID = f"videodb-token-broker/{__version__}"

log = structlog.get_logger(logger_name=__name__)


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
    never be kept for, or sent on, another's.
    """

    @property
    def cookies(self) -> httpx.Cookies:
        return _NoCookies()

    @cookies.setter
    def cookies(self, _: object) -> None:
        pass  # httpx's constructor sets the jar; there is none to set


def build_http_client(timeout: float) -> httpx.AsyncClient:
    """The shared client for VideoDB: httpx's own transport (httpcore), explicit
    connect/read/write/pool timeouts, no redirects followed, no cookies kept, and the
    environment's proxy settings honoured as httpx does by default."""
    return CookielessClient(
        timeout=httpx.Timeout(timeout, connect=min(timeout, 3.0), pool=timeout),
        # as many kept alive as may be open: under load, a connection is reused, not closed
        # after one call and opened again (a TLS handshake with VideoDB each time)
        limits=httpx.Limits(
            max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS
        ),
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


class VideoDBClient:
    """Exchanges the server-held key for a session token bound to one user."""

    def __init__(
        self, http: httpx.AsyncClient, api_key: SecretStr, base_url: str, timeout: float
    ) -> None:
        self._http = http
        self._api_key = api_key
        self._url = base_url + TOKEN_PATH
        self._timeout = timeout
        # Requests queue here, before httpx: httpcore's pool does work in proportion to the
        # requests and connections it holds on every event (docs/performance.md).
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
        # Streamed, and no more read than the cap: a hostile or broken answer cannot fill
        # memory, and its body is never logged.
        async with self._http.stream(
            "POST",
            self._url,
            content=json.dumps({"user_id": user_id, "expires_in": expires_in}).encode(),
            headers={
                "x-access-token": self._api_key.get_secret_value(),
                "Content-Type": "application/json",
                "x-videodb-client": CLIENT_ID,
            },
        ) as resp:
            body = bytearray()
            async for chunk in resp.aiter_bytes():
                body += chunk
                if len(body) > MAX_RESPONSE_BYTES:
                    break
            return resp.status_code, resp.headers, bytes(body)

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
