"""HTTP/1.1 for the VideoDB client: an httpx transport over the event loop's own
transports, with responses parsed by httptools.

httpx's default transport sends through httpcore, which parses HTTP with h11 (pure
Python) and, under asyncio, reads and writes through anyio. On this path that machinery
cost about a millisecond of every cache miss (docs/performance.md). This transport keeps
httpx above it unchanged (the client, its timeouts, its exceptions, its proxy mounts) and
does the rest with what the server side already uses: httptools, the C parser (llhttp,
from Node.js) that uvicorn parses requests with, over an `asyncio.Protocol`.

What it does, and no more:
- one request at a time per connection; kept-alive connections reused per origin, newest
  first, up to `max_keepalive_connections`, for `keepalive_expiry` seconds; at most
  `max_connections` open, a request waiting for one at most the pool timeout;
- a whole response read before it returns (status line and headers at most
  `MAX_HEAD_BYTES`, the body at most `max_body_bytes`: past it the body is cut there and
  the connection closed, so the caller sees an oversized body and no peer fills memory),
  and not kept once handed on: an idle connection holds no token;
- any failure, timeout or cancellation mid-exchange closes the connection: a late answer
  can never be read as the next request's;
- a connection is reused only when the parser says the response allows it and nothing
  arrived after it; anything arriving on an idle connection closes it;
- errors are the httpx exceptions httpcore's would be (ConnectError, ConnectTimeout,
  ReadTimeout, WriteTimeout, ReadError, RemoteProtocolError, PoolTimeout), with messages
  that never carry a header value.
"""

# The timeouts are httpx's, passed per request:
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import re
import ssl
from collections import deque
from typing import Any, cast

import httptools
import httpx

MAX_HEAD_BYTES = 64 * 1024
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
_ILLEGAL_NAME = re.compile(rb"[^!#$%&'*+\-.^_`|~0-9A-Za-z]")
_ILLEGAL_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_NO_BODY_METHODS = frozenset({"HEAD", "CONNECT"})

Origin = tuple[str, str, int]


class _Connection(asyncio.Protocol):
    """One connection: writes a request, parses its response, wakes the one waiter."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_body: int) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._max_body = max_body
        self._parser: httptools.HttpResponseParser | None = None
        self._done: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._read_timeout: float | None = None
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.reusable = False
        self._head_bytes = 0
        self._head_complete = False
        self._framed = False  # Content-Length or chunked: the end is known without EOF
        self._last_data = 0.0

    # The exchange, as the transport drives it.

    async def exchange(self, data: bytes, read: float | None, write: float | None) -> None:
        """Send one request and wait until its response is whole (or fails)."""
        assert self.transport is not None
        self._reset()
        self._parser = httptools.HttpResponseParser(self)
        done = self._done = self.loop.create_future()
        self._read_timeout = read
        try:
            self.transport.write(data)
            if self._writable is not None:  # the peer is not reading what we send
                await self._drain(write)
            self._last_data = self.loop.time()
            if read is not None:
                self._timer = self.loop.call_later(read, self._check_quiet)
            await done
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if not done.done():
                done.cancel()  # nobody will wait for it any more
            self._parser = None

    async def _drain(self, timeout: float | None) -> None:
        """Wait until the peer takes what we wrote, or answers before it does."""
        assert self._writable is not None
        assert self._done is not None
        finished, _ = await asyncio.wait(
            (self._writable, self._done), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if not finished:
            raise httpx.WriteTimeout("timed out sending to VideoDB")

    def forget_response(self) -> None:
        """Drop the last answer (it holds an st- token) once it has been handed on."""
        self.headers = []
        self.body = bytearray()

    def _check_quiet(self) -> None:
        """The read timeout: no byte of the response for that many seconds."""
        assert self._read_timeout is not None
        if self._done is None or self._done.done():
            return  # the answer came in the same turn of the loop as the timer
        quiet = self.loop.time() - self._last_data
        if quiet < self._read_timeout:
            self._timer = self.loop.call_later(self._read_timeout - quiet, self._check_quiet)
        else:
            self._fail(httpx.ReadTimeout("timed out reading from VideoDB"))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, exc: Exception) -> None:
        self.close()
        if self._done is not None and not self._done.done():
            self._done.set_exception(exc)

    def _finish(self) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None or self._done is None or self._done.done():
            self.close()  # bytes nobody asked for: this connection is out of step
            return
        self._last_data = self.loop.time()
        if not self._head_complete:
            self._head_bytes += len(data)
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httpx.RemoteProtocolError("VideoDB switched protocols"))
            return
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed response: {exc}"))
            return
        if not self._head_complete and self._head_bytes > MAX_HEAD_BYTES:
            self._fail(httpx.RemoteProtocolError("response headers too large"))
        elif len(self.body) > self._max_body:
            self.close()  # the caller sees the cut body as oversized
            self._finish()

    def eof_received(self) -> bool:
        self.closed = True
        if self._head_complete and not self._framed and self._parser is not None:
            self._finish()  # a body that ends where the connection does
        else:
            self._fail(httpx.RemoteProtocolError("VideoDB closed the connection mid-response"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if exc is None:
            self._fail(httpx.RemoteProtocolError("VideoDB closed the connection mid-response"))
        else:
            self._fail(httpx.ReadError(f"connection lost: {type(exc).__name__}"))
        self._wake_writer()

    def pause_writing(self) -> None:
        self._writable = self.loop.create_future()

    def resume_writing(self) -> None:
        self._wake_writer()

    def _wake_writer(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    # httptools' callbacks

    def on_message_begin(self) -> None:
        if self.status >= 200:  # a second answer to one request: stop the parser here
            raise httpx.RemoteProtocolError("VideoDB sent more than one response")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-length" or (
            # only chunked as the last coding ends a body; any other ends at the close
            lowered == b"transfer-encoding" and value.lower().rstrip().endswith(b"chunked")
        ):
            self._framed = True

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        self._head_complete = True
        self.status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if len(self.body) <= self._max_body:
            self.body += body[: self._max_body + 1 - len(self.body)]

    def on_message_complete(self) -> None:
        assert self._parser is not None
        if self.status < 200:  # an interim answer (100 Continue): the real one follows
            self.status, self.headers, self._head_complete, self._framed = 0, [], False, False
            return
        self.reusable = self._parser.should_keep_alive()
        self._finish()


def _request_head(request: httpx.Request) -> bytes:
    """The request line and headers, refusing anything that would split them."""
    method = request.method.encode("ascii")
    if not method or _ILLEGAL_NAME.search(method):
        raise httpx.LocalProtocolError("the request method is not valid HTTP")
    lines = [method, b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
    for name, value in request.headers.raw:
        if not name or _ILLEGAL_NAME.search(name):
            raise httpx.LocalProtocolError("a request header name is not valid HTTP")
        if _ILLEGAL_VALUE.search(value):
            # the name is safe to show; the value may be the key
            raise httpx.LocalProtocolError(f"the value of request header {name!r} is not valid")
        lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def _chunked(body: bytes) -> bytes:
    return (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"


class VideoDBTransport(httpx.AsyncBaseTransport):
    """httpx's transport interface, HTTP/1.1 over the running event loop (uvloop's, when
    uvicorn runs on it), with the TLS context httpx builds (verification and host names
    checked as with httpx's own transport)."""

    def __init__(
        self,
        *,
        limits: httpx.Limits,
        verify: ssl.SSLContext | bool = True,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self._ssl = httpx.create_ssl_context(verify=verify)
        self._slots = asyncio.Semaphore(limits.max_connections or 1000)
        self._max_idle = (
            limits.max_keepalive_connections
            if limits.max_keepalive_connections is not None
            else 1000
        )
        self._expiry = limits.keepalive_expiry
        self._max_body = max_body_bytes
        self._idle: dict[Origin, deque[_Connection]] = {}
        self._open: set[_Connection] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}")
        if request.method in _NO_BODY_METHODS:
            raise httpx.UnsupportedProtocol(f"{request.method} is not supported here")
        origin = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        data = _request_head(request)
        body = await request.aread()
        chunked = request.headers.get("transfer-encoding", "").lower() == "chunked"
        data += _chunked(body) if chunked else body
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        await self._acquire_slot(timeouts.get("pool"))
        try:
            connection = self._idle_connection(origin) or await self._connect(
                origin, timeouts.get("connect")
            )
            try:
                await connection.exchange(data, timeouts.get("read"), timeouts.get("write"))
            except BaseException:
                self._discard(connection)  # whatever it was doing, it is out of step now
                raise
            response = httpx.Response(
                connection.status,
                headers=connection.headers,
                stream=httpx.ByteStream(bytes(connection.body)),
                extensions={"http_version": b"HTTP/1.1"},
            )
            self._release(origin, connection)
            connection.forget_response()  # an idle connection keeps no token
        finally:
            self._slots.release()
        return response

    async def _acquire_slot(self, timeout: float | None) -> None:
        if not self._slots.locked():
            await self._slots.acquire()  # free: returns without yielding
            return
        try:
            async with asyncio.timeout(timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout("no connection to VideoDB came free in time") from None

    def _idle_connection(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = asyncio.get_running_loop().time()
        while idle:
            connection = idle.pop()  # newest first: the likeliest to be alive and warm
            if connection.closed or self._expired(connection, now):
                self._discard(connection)
                continue
            return connection
        return None

    async def _connect(self, origin: Origin, timeout: float | None) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        tls: dict[str, Any] = (
            {"ssl": self._ssl, "server_hostname": host, "ssl_handshake_timeout": timeout}
            if scheme == "https"
            else {}
        )
        try:
            async with asyncio.timeout(timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop, self._max_body), host, port, **tls
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"timed out connecting to {host}:{port}") from None
        except (OSError, ssl.SSLError) as exc:  # refused, unreachable, TLS not trusted
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}") from None
        # asyncio and uvloop both open TCP connections with TCP_NODELAY set already.
        self._open.add(connection)
        return connection

    def _release(self, origin: Origin, connection: _Connection) -> None:
        idle = self._idle.setdefault(origin, deque())
        now = asyncio.get_running_loop().time()
        # The oldest idle connections sit below the ones in use: close them once expired.
        while idle and (idle[0].closed or self._expired(idle[0], now)):
            self._discard(idle.popleft())
        if connection.reusable and not connection.closed and len(idle) < self._max_idle:
            connection.idle_since = now
            idle.append(connection)
        else:
            self._discard(connection)

    def _expired(self, connection: _Connection, now: float) -> bool:
        return self._expiry is not None and now - connection.idle_since > self._expiry

    def _discard(self, connection: _Connection) -> None:
        connection.close()
        self._open.discard(connection)

    async def aclose(self) -> None:
        for connection in self._open:
            connection.close()
        self._open.clear()
        self._idle.clear()
        await asyncio.sleep(0)  # let the loop close the sockets before we return
