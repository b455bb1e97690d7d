"""The one place that talks to VideoDB: the calls that carry the key, over one shared client."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterable, Callable
from typing import TypeVar

import httpx
import structlog
from pydantic import SecretStr

from app import __version__
from app.errors import (
    BrokerError,
    NotFound,
    UpstreamTimeout,
    UpstreamUnavailable,
    UpstreamUnusable,
)
from app.observability import tracing
from app.videodb.answers import (
    DEFAULT_RETRY_AFTER,
    MAX_RESPONSE_BYTES,
    Answer,
    CaptureSession,
    MintedToken,
    created_session_from,
    data_from,
    session_record_from,
    token_from,
    websocket_url_from,
)
from app.videodb.transport import AiohttpClient

UPSTREAM_TOKEN_PATH = "/capture/session/token"  # noqa: S105 - VideoDB's path, not ours
# VideoDB calls at once per process unless BROKER_UPSTREAM_MAX_CONNECTIONS says otherwise; the
# rest queue in front of the pool (a bounded pool also bounds the TLS connections a login
# storm opens to VideoDB). Calls in flight are new users a second times VideoDB's latency:
# 64 carry 640 a second at 100 ms; one worker's CPU mints 700-1,600 by host (docs/operations.md).
MAX_CONNECTIONS = 64
CLIENT_ID = f"videodb-token-broker/{__version__}"

log = structlog.get_logger(logger_name=__name__)


class _NoCookies(httpx.Cookies):
    """A jar that keeps nothing: the client is shared by every user's call."""

    def extract_cookies(self, response: httpx.Response) -> None:
        """Drop what VideoDB (or anything in front of it) tried to set."""


class CookielessClient(AiohttpClient):
    """An httpx client over aiohttp's HTTP/1.1 whose cookie jar never fills.

    One client serves every user's VideoDB call, so a cookie set on one user's call must
    never be kept for, or sent on, another's.
    """

    @property
    def cookies(self) -> httpx.Cookies:
        return _NoCookies()

    @cookies.setter
    def cookies(self, _: object) -> None:
        pass  # httpx's constructor sets the jar; there is none to set


def build_http_client(timeout: float, max_connections: int = MAX_CONNECTIONS) -> httpx.AsyncClient:
    """The shared client for VideoDB: httpx over aiohttp's transport (transport.py), explicit
    connect/read/pool timeouts (aiohttp has no write timeout: the call's deadline bounds a
    write), no redirects followed, no cookies kept, and the environment's proxy settings
    and CA bundle honoured as httpx does by default."""
    return CookielessClient(
        timeout=httpx.Timeout(timeout, connect=min(timeout, 3.0), pool=timeout),
        # as many kept alive as may be open: under load, a connection is reused, not closed
        # after one call and opened again (a TLS handshake with VideoDB each time)
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
        follow_redirects=False,
        headers={"User-Agent": CLIENT_ID},
    )


# Failures httpx reports before a byte of the request was written: safe to repeat any call
# (transport.py tells aiohttp's failures as these same classes).
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class VideoDBClient:
    """The calls that carry the server-held key: a token for one user, and capture sessions."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        api_key: SecretStr,
        base_url: str,
        timeout: float,
        collection_id: str = "default",
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        """`max_connections`: the calls in flight at once, as `http` was built with (the rest
        wait their turn here)."""
        self._http = http
        self._base = base_url
        self._collection_path = f"/collection/{collection_id}"
        self._sessions_path = f"{self._collection_path}/capture/session"
        # parsed once: httpx parses a URL given as a string on every call
        self._urls = {
            path: httpx.URL(base_url + path) for path in (UPSTREAM_TOKEN_PATH, self._sessions_path)
        }
        self._timeout = timeout
        headers = httpx.Headers(http.headers)
        headers["x-access-token"] = api_key.get_secret_value()
        headers["x-videodb-client"] = CLIENT_ID
        # Nothing compressed asked for: an answer is a few hundred bytes of JSON, and its
        # body is then read as it came (nothing to inflate before the cap is counted).
        headers["Accept-Encoding"] = "identity"
        self._headers = headers.raw
        headers["Content-Type"] = "application/json"
        self._json_headers = headers.raw
        self._extensions = {"timeout": http.timeout.as_dict()}
        # Requests queue here, before httpx: the pool never holds more than it can serve,
        # and a wait for it is not counted against the `pool` timeout.
        self._slots = asyncio.Semaphore(max_connections)

    async def mint(self, user_id: str, expires_in: int, budget: float | None = None) -> MintedToken:
        """A token for this user; UpstreamError/Unavailable/Timeout on any failure."""
        sent_at = time.time()
        payload = {"user_id": user_id, "expires_in": expires_in}
        answer = await self.call("POST", UPSTREAM_TOKEN_PATH, payload, budget)
        return _interpreted(lambda: token_from(answer, sent_at, expires_in))

    async def create_capture_session(
        self, payload: dict[str, object], budget: float | None = None
    ) -> CaptureSession:
        """Create a capture session (never repeated once it may have reached VideoDB)."""
        answer = await self.call("POST", self._sessions_path, payload, budget)
        return _interpreted(lambda: created_session_from(answer))

    async def get_capture_session(
        self, session_id: str, budget: float | None = None
    ) -> dict[str, object]:
        """VideoDB's record of one capture session; NotFound when it knows none by that id."""
        answer = await self.call("GET", f"{self._sessions_path}/{session_id}", None, budget)
        return _interpreted(lambda: session_record_from(answer))

    async def websocket_url(self, budget: float | None = None) -> str:
        """A new VideoDB WebSocket for this collection's live events."""
        answer = await self.call("GET", f"{self._collection_path}/websocket", None, budget)
        return _interpreted(lambda: websocket_url_from(answer))

    async def start_step(
        self, path: str, payload: dict[str, object], budget: float | None = None
    ) -> dict[str, object]:
        """Start an AI step on a real-time stream (`path` under /rtstream/)."""
        answer = await self.call("POST", path, payload, budget)
        return _interpreted(lambda: data_from(answer, (200, 201)))

    async def export_session(
        self, session_id: str, budget: float | None = None
    ) -> dict[str, object]:
        """Export a capture session's recording, or poll the export under way."""
        answer = await self.call("POST", f"{self._sessions_path}/{session_id}/export", {}, budget)
        if answer.status == 404:
            raise NotFound("No such capture session.")
        return _interpreted(lambda: data_from(answer, (200, 201, 202)))

    async def call(
        self, method: str, path: str, payload: dict[str, object] | None, budget: float | None
    ) -> Answer:
        """One call with the key, within `budget` seconds; transport failures become
        UpstreamTimeout/UpstreamUnavailable, whose `reached` says whether VideoDB may have
        received the request."""
        reached = False
        try:
            async with asyncio.timeout(budget or self._timeout):
                async with self._slots:
                    reached = True  # from here on, a byte of the request may have left
                    return await self._exchange(method, path, payload)
        except (TimeoutError, httpx.TimeoutException) as exc:
            log.warning("videodb_timeout", timeout_s=self._timeout)
            sent = reached and not isinstance(exc, _NOT_SENT)
            raise UpstreamTimeout(
                "VideoDB did not answer in time; try again shortly.", reached=sent
            ) from None
        except httpx.HTTPError as exc:
            log.warning("videodb_unreachable", error_type=type(exc).__name__)
            sent = reached and not isinstance(exc, _NOT_SENT)
            raise UpstreamUnavailable(
                "VideoDB could not be reached; try again shortly.",
                DEFAULT_RETRY_AFTER,
                reached=sent,
            ) from None

    async def _exchange(self, method: str, path: str, payload: dict[str, object] | None) -> Answer:
        url = self._urls.get(path) or httpx.URL(self._base + path)
        # The request whole, as httpx would send it: the client's headers and timeouts fixed
        # at start, Host (and a body's Content-Length) added here (build_request would merge
        # the client's headers, cookies and parameters into every call anew). A GET carries
        # no body and no Content-Length, as httpx sends it.
        if payload is None:
            content = b""
            headers = [*self._headers, (b"Host", url.netloc)]
        else:
            content = json.dumps(payload).encode()
            length = str(len(content)).encode()
            headers = [*self._json_headers, (b"Host", url.netloc), (b"Content-Length", length)]
        request = httpx.Request(
            method,
            url,
            headers=headers,
            stream=httpx.ByteStream(content),
            extensions=self._extensions,
        )
        request.read()  # the body as bytes: the transport sends it with its length
        # Straight to the transport httpx picks for this URL (the environment's proxy when one
        # applies; the seam respx mocks too): the client's own layers, auth, redirects,
        # cookies and event hooks, are all unused here, and cost a fifth of a call's CPU.
        transport = self._http._transport_for_url(url)
        resp = await transport.handle_async_request(request)
        try:
            # Streamed, and no more read than the cap: a hostile or broken answer cannot
            # fill memory, and its body is never logged.
            body = bytearray()
            async for chunk in _body(resp):
                body += chunk
                if len(body) > MAX_RESPONSE_BYTES:
                    del body[MAX_RESPONSE_BYTES + 1 :]  # what Answer promises, no more
                    break
        finally:
            await resp.aclose()
        tracing.annotate(**{"http.response.status_code": resp.status_code})  # the attempt's
        return Answer(resp.status_code, resp.headers, bytes(body))


def _body(resp: httpx.Response) -> AsyncIterable[bytes]:
    """The answer's body: as it came, unless VideoDB encoded it although asked not to (then
    as httpx decodes it, the cap counting what it inflates to)."""
    if "content-encoding" in resp.headers or not isinstance(resp.stream, httpx.AsyncByteStream):
        return resp.aiter_bytes()
    return resp.stream  # httpx's decoder and chunker over it cost a few per cent of a call


T = TypeVar("T")


def _interpreted(read: Callable[[], T]) -> T:
    try:
        return read()
    except BrokerError:
        raise
    except Exception as exc:
        # Whatever else an answer can make go wrong is an answer we cannot use.
        log.warning("videodb_unusable", problem=type(exc).__name__)
        raise UpstreamUnusable("VideoDB answered with something unusable.") from None
