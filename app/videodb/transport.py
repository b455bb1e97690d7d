"""The VideoDB client's kept transport: httpx's API over aiohttp's HTTP/1.1 (httpx-aiohttp).

aiohttp parses answers in C and keeps its own pool; httpx stays the API (timeouts, proxies
from the environment, the CA bundle, streaming). httpx-aiohttp builds the transport (its
CA bundle, limits and proxy as httpx reads them); the exchange itself is ours, the same
arguments to aiohttp as httpx-aiohttp passes, less what it adds to every call (its timeouts
made anew, the body read through three nested streams: 6-8 % of a call's CPU,
docs/performance.md). No byte of HTTP is written or parsed here: aiohttp does both. Three
more things are ours, each because the call that carries the key depends on it:
- aiohttp's failures are told as the httpx exceptions httpcore raises for the same event,
  so that "never sent" still means never sent (httpx-aiohttp's own table calls a server that
  hung up after our request a connect timeout, and lets a malformed answer through as
  aiohttp's ClientResponseError);
- a kept connection holding or receiving anything while idle is closed, never reused: else
  bytes VideoDB sent after an answer would be read as the answer to the next call;
- no cookie jar and no retry of aiohttp's own: the client is shared by every user's call,
  and every attempt is the retry policy's (app/videodb/retries.py), counted and timed.
"""

from __future__ import annotations

import select
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from functools import lru_cache

import aiohttp
import httpx
import httpx_aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ConnectionKey
from aiohttp.connector import Connection
from aiohttp.tracing import Trace
from httpx._types import CertTypes

# aiohttp's failures, most specific first, and the httpx exception httpcore raises for the
# same event. The first two mean nothing of the request left (VideoDBClient's _NOT_SENT).
_AS_HTTPCORE_TELLS: tuple[tuple[type[aiohttp.ClientError], type[httpx.TransportError]], ...] = (
    # refused, unresolved, the proxy unreachable, the TLS handshake or certificate refused
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    # connecting, or waiting for a pooled connection (aiohttp's `connect` covers both)
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),  # SocketTimeoutError: no byte in `read`
    (aiohttp.ClientHttpProxyError, httpx.ProxyError),  # the proxy refused CONNECT
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),  # an answer that does not parse
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),  # hung up before answering
    (aiohttp.ClientPayloadError, httpx.RemoteProtocolError),  # hung up mid-body, bad chunks
    (aiohttp.ClientOSError, httpx.ReadError),  # reset
)


def _as_httpcore_tells(exc: aiohttp.ClientError) -> httpx.TransportError:
    for raised, told in _AS_HTTPCORE_TELLS:
        if isinstance(exc, raised):
            return told(str(exc))
    return httpx.TransportError(str(exc))  # anything else: it may have reached VideoDB


@contextmanager
def _told_as_httpcore() -> Iterator[None]:
    """aiohttp's failures (raw, or as httpx-aiohttp mapped them) as httpcore's."""
    try:
        yield
    except aiohttp.ClientError as exc:
        raise _as_httpcore_tells(exc) from exc
    except httpx.TransportError as exc:
        if not isinstance(exc.__cause__, aiohttp.ClientError):
            raise
        raise _as_httpcore_tells(exc.__cause__) from exc.__cause__


class _AnswerStream(httpx.AsyncByteStream):
    """An answer's body in pieces of at most 16 KiB (as httpx-aiohttp reads it), its failures
    told as httpcore's. aiohttp may hold several hundred KiB: read whole, one piece could
    overshoot the client's cap by as much, and httpx inflates a compressed piece whole."""

    PIECE = 16 * 1024

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _told_as_httpcore():
            while chunk := await self._response.content.read(self.PIECE):
                yield chunk

    async def aclose(self) -> None:
        """Back to the pool when read to its end; closed otherwise (aiohttp's rule)."""
        with _told_as_httpcore():
            await self._response.__aexit__(None, None, None)


@lru_cache(maxsize=16)
def _timeouts(
    connect: float | None, read: float | None, pool: float | None
) -> aiohttp.ClientTimeout:
    """httpx's timeouts as aiohttp's, made once per set (a client's are fixed)."""
    return aiohttp.ClientTimeout(sock_connect=connect, sock_read=read, connect=pool)


def _bytes_waiting(protocol: ResponseHandler) -> bool:
    """Whether the kernel holds bytes (or the peer's close) for this idle connection."""
    sock = protocol.transport.get_extra_info("socket") if protocol.transport else None
    if sock is None:
        return False
    if hasattr(select, "poll"):  # select() cannot watch a descriptor past 1023
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([sock.fileno()], [], [], 0)[0])


class _FreshConnector(aiohttp.TCPConnector):
    """aiohttp's pool, reusing only connections that hold nothing.

    aiohttp parses whatever arrives on a kept connection, idle or not, and queues a whole
    answer for the next reader: bytes after an answer (in the read that ended it, or later
    while the connection waited in the pool) would be read as the next call's answer. A
    connection with anything queued (`should_close`) or waiting in the kernel (as httpcore
    checks) is closed here instead, and the call takes another.
    """

    async def _get(self, key: ConnectionKey, traces: list[Trace]) -> Connection | None:
        while (conn := await super()._get(key, traces)) is not None:
            protocol = conn.protocol
            if protocol is not None and not (protocol.should_close or _bytes_waiting(protocol)):
                return conn
            conn.close()
        return None


class AiohttpTransport(httpx_aiohttp.AiohttpTransport):
    """httpx-aiohttp's transport with failures told as httpcore's, no cookie jar, no retry
    of aiohttp's own, and no connection reused with anything left on it."""

    def get_client(self) -> aiohttp.ClientSession:
        """The aiohttp session, made on the first call (inside the running loop)."""
        connector = _FreshConnector(
            limit=self.limits.max_connections or 0,
            keepalive_timeout=self.limits.keepalive_expiry,
            ssl=self.ssl_context,
        )
        session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
        # aiohttp repeats a GET whose kept connection failed; every attempt is ours to count
        session._retry_connection = False
        return session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """One exchange, as httpx-aiohttp makes it less the layers it adds to every call: the
        timeouts made once, the body read through one stream (not three nested), failures
        told as httpcore's."""
        if not isinstance(self.client, aiohttp.ClientSession):
            self.client = self.get_client()
        timeout = request.extensions.get("timeout", {})
        data: bytes | httpx.AsyncByteStream | None
        try:
            data = request.content or None
        except httpx.RequestNotRead:
            data = request.stream  # type: ignore[assignment]  # aiohttp reads it as it sends
            request.headers.pop("transfer-encoding", None)  # aiohttp frames the body itself
        proxy = self.proxy
        with _told_as_httpcore():
            response = await self.client.request(
                request.method,
                str(request.url),
                headers=request.headers.multi_items(),
                data=data,
                allow_redirects=False,
                auto_decompress=False,
                compress=False,
                timeout=_timeouts(timeout.get("connect"), timeout.get("read"), timeout.get("pool")),
                server_hostname=request.extensions.get("sni_hostname"),
                proxy=str(proxy.url) if proxy else None,
                proxy_auth=aiohttp.BasicAuth(*proxy.auth) if proxy and proxy.auth else None,
                proxy_headers=proxy.headers.multi_items() if proxy else None,
            )
        return httpx.Response(
            response.status,
            headers=response.raw_headers,
            stream=_AnswerStream(response),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )


# httpx's own default (it always passes its limits: only the signature needs one)
_HTTPX_DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)


class AiohttpClient(httpx.AsyncClient):
    """An httpx client whose transports, direct and through the environment's proxies, are
    AiohttpTransport (httpx builds one per proxy it finds in HTTPS_PROXY and the like)."""

    def _init_transport(
        self,
        verify: ssl.SSLContext | str | bool = True,
        cert: CertTypes | None = None,
        trust_env: bool = True,
        http1: bool = True,
        http2: bool = False,
        limits: httpx.Limits = _HTTPX_DEFAULT_LIMITS,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> httpx.AsyncBaseTransport:
        if transport is not None:
            return transport
        return AiohttpTransport(verify=verify, cert=cert, trust_env=trust_env, limits=limits)

    def _init_proxy_transport(
        self,
        proxy: httpx.Proxy,
        verify: ssl.SSLContext | str | bool = True,
        cert: CertTypes | None = None,
        trust_env: bool = True,
        http1: bool = True,
        http2: bool = False,
        limits: httpx.Limits = _HTTPX_DEFAULT_LIMITS,
    ) -> httpx.AsyncBaseTransport:
        return AiohttpTransport(
            verify=verify, cert=cert, trust_env=trust_env, limits=limits, proxy=proxy
        )
