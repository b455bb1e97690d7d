"""httpcore's network layer on the event loop's own transports, for the VideoDB client.

httpx sends through httpcore, and httpcore, under asyncio, through anyio: every read and
write pays for a cancel scope with its own timer, an exception-mapping context manager, a
checkpoint, and a `poll()` system call to ask whether an idle connection is still open.
Without anyio, one hop to VideoDB costs about 0.2 ms less here (docs/performance.md).
This backend implements httpcore's documented `AsyncNetworkBackend` interface on an
`asyncio.Protocol` instead, as a pull request to httpx's maintained fork proposes (httpx2
#1170, not in its 2.16.2 release): a read returns what is buffered or waits on one future
with one timer; a write hands the bytes to the transport and waits only under
back-pressure; whether an idle connection was closed is known from state. TLS goes through
`loop.start_tls` with the SSL context httpx built (verification and host name checks as
before), and every failure is raised as the same httpcore exception anyio's backend raises,
so httpx maps it as before.
"""

# httpcore's interface passes each operation's timeout as an argument:
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterable
from typing import Any, cast

import httpcore
import httpx

# Read ahead on an idle connection up to this much, so a close is seen without a system
# call; past it, stop reading until the buffer is drained (a hostile peer cannot fill memory).
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024

SocketOption = (
    tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]
)


class _Connection(asyncio.Protocol):
    """Buffers what arrives and wakes the one reader or writer waiting for it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.closed = False  # the peer sent EOF or the connection was lost
        self.error: BaseException | None = None
        self._reading_paused = False
        self._readable: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
            self._reading_paused = True
        self._wake_reader()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake_reader()
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.error = exc
        self._wake_reader()
        self._wake_writer()

    def pause_writing(self) -> None:
        loop = asyncio.get_running_loop()
        self._writable = loop.create_future()

    def resume_writing(self) -> None:
        self._wake_writer()

    def take(self, max_bytes: int) -> bytes:
        chunk = bytes(self.buffer[:max_bytes])
        del self.buffer[:max_bytes]
        if self._reading_paused and len(self.buffer) < LOW_WATER and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        return chunk

    async def readable(self, timeout: float | None) -> None:
        self._readable = asyncio.get_running_loop().create_future()
        await _wait(self._readable, timeout)

    async def writable(self, timeout: float | None) -> None:
        if self._writable is not None and not self.closed:
            await _wait(self._writable, timeout)

    def _wake_reader(self) -> None:
        if self._readable is not None and not self._readable.done():
            self._readable.set_result(None)
        self._readable = None

    def _wake_writer(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None


async def _wait(future: asyncio.Future[None], timeout: float | None) -> None:
    """Wait for `future`; TimeoutError after `timeout` seconds (None: no limit)."""
    if timeout is None:
        await future
        return
    timer = asyncio.get_running_loop().call_later(timeout, _expire, future)
    try:
        await future
    finally:
        timer.cancel()


def _expire(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class AsyncioStream(httpcore.AsyncNetworkStream):
    """One connection, as httpcore reads and writes it."""

    def __init__(self, transport: asyncio.Transport, connection: _Connection) -> None:
        self._transport = transport
        self._connection = connection

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        connection = self._connection
        if not connection.buffer and not connection.closed:
            try:
                await connection.readable(timeout)
            except TimeoutError:
                raise httpcore.ReadTimeout("timed out reading from the peer") from None
        if connection.buffer:
            return connection.take(max_bytes)
        if connection.error is not None:
            raise httpcore.ReadError(str(connection.error)) from None
        return b""  # EOF: httpcore reports a connection closed mid-response

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        if self._connection.closed or self._transport.is_closing():
            raise httpcore.WriteError("the connection is closed")
        self._transport.write(buffer)
        try:
            await self._connection.writable(timeout)
        except TimeoutError:
            raise httpcore.WriteTimeout("timed out writing to the peer") from None
        if self._connection.error is not None:
            raise httpcore.WriteError(str(self._connection.error))

    async def aclose(self) -> None:
        self._transport.close()
        await asyncio.sleep(0)  # let the loop close the socket before we return

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                tls = await loop.start_tls(
                    self._transport,
                    self._connection,
                    ssl_context,
                    server_hostname=server_hostname,
                    ssl_handshake_timeout=timeout,
                )
        except TimeoutError:
            self._transport.close()
            raise httpcore.ConnectTimeout("timed out in the TLS handshake") from None
        except (OSError, ssl.SSLError) as exc:
            self._transport.close()
            raise httpcore.ConnectError(str(exc)) from None
        secured = cast(asyncio.Transport, tls)
        self._connection.transport = secured  # flow control now goes through the TLS layer
        return AsyncioStream(secured, self._connection)

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self._transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        if info == "socket":
            return self._transport.get_extra_info("socket")
        if info == "is_readable":  # an idle connection with data or EOF waiting is unusable
            return bool(self._connection.buffer) or self._connection.closed
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """Connections opened by the running event loop (uvloop's, when uvicorn runs on it)."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        local = (local_address, 0) if local_address else None
        try:
            async with asyncio.timeout(timeout):
                transport, connection = await loop.create_connection(
                    _Connection, host, port, local_addr=local
                )
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"timed out connecting to {host}:{port}") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from None
        # asyncio and uvloop both open TCP connections with TCP_NODELAY set already.
        sock: socket.socket | None = transport.get_extra_info("socket")
        if sock is not None:
            for option in socket_options or ():
                sock.setsockopt(*option)
        return AsyncioStream(transport, connection)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("the VideoDB client connects over TCP only")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class AsyncioTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport (its TLS context, limits and exception mapping) over the
    asyncio backend. httpx 0.28 takes no network backend, so the pool it built is replaced
    by the same pool with ours; tests/test_asyncio_network.py fails if that stops holding."""

    def __init__(self, *, limits: httpx.Limits, verify: ssl.SSLContext | bool = True) -> None:
        super().__init__(limits=limits, verify=verify)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=AsyncioBackend(),
        )
