"""The VideoDB client's network layer on real loopback sockets: every way a peer can fail
ends in the httpx exception anyio's backend gives, and nothing waits past its timeout."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from app.asyncio_network import HIGH_WATER, AsyncioStream, AsyncioTransport, _Connection
from tests.fakes.tls import self_signed_certificate

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


@asynccontextmanager
async def peer(handler: Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    """A server on a loopback port running `handler` per connection; yields its base URL.
    On leaving, every connection it accepted is closed (Python 3.11's server does not)."""
    writers: list[asyncio.StreamWriter] = []

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await handler(reader, writer)

    server = await asyncio.start_server(tracked, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        server.close()
        for writer in writers:
            writer.transport.abort()
        await asyncio.sleep(0.01)  # let the loop release the sockets


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    length = next((int(line.split(b":")[1]) for line in lines if b"content-length" in line), 0)
    return head + await reader.readexactly(length)


async def answer_each(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        try:
            await read_request(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        writer.write(OK)
        await writer.drain()


def client(timeout: float = 2.0, verify: ssl.SSLContext | bool = True) -> httpx.AsyncClient:
    transport = AsyncioTransport(limits=httpx.Limits(max_connections=4), verify=verify)
    return httpx.AsyncClient(transport=transport, timeout=timeout)


async def test_requests_travel_on_our_streams_over_one_kept_alive_connection() -> None:
    connections = 0

    async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await answer_each(reader, writer)

    async with peer(counted) as url, client() as http:
        for _ in range(3):
            resp = await http.post(url + "/capture/session/token", content=b"{}")
            assert resp.status_code == 200
            assert resp.json() == {}
            # httpx 0.28 takes no network backend; if our pool stops being used, this fails
            assert isinstance(resp.extensions["network_stream"], AsyncioStream)
    assert connections == 1


async def test_a_kept_alive_connection_the_peer_closed_is_not_reused() -> None:
    async def one_answer_then_close(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader)
        writer.write(OK)
        await writer.drain()
        writer.close()  # the keep-alive timeout of a server, while the client is idle

    async with peer(one_answer_then_close) as url, client() as http:
        assert (await http.get(url)).status_code == 200
        await asyncio.sleep(0.1)
        assert (await http.get(url)).status_code == 200  # a new connection, not an error


async def test_a_peer_that_never_answers_is_a_read_timeout_on_time() -> None:
    async def silent(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
        await reader.read()

    async with peer(silent) as url, client(timeout=0.3) as http:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            await http.get(url)
        assert time.monotonic() - started < 1.0


async def test_a_peer_that_stops_mid_answer_is_a_read_timeout_on_time() -> None:
    async def stalls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK[:30])
        await reader.read()

    async with peer(stalls) as url, client(timeout=0.3) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.get(url)


@pytest.mark.parametrize("sent", [OK[:-1], b""], ids=["mid-answer", "without-answering"])
async def test_a_peer_that_closes_early_is_a_protocol_error(sent: bytes) -> None:
    async def hangs_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(sent)
        writer.close()

    async with peer(hangs_up) as url, client() as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get(url)


async def test_a_reset_connection_is_a_read_error() -> None:
    async def resets(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async with peer(resets) as url, client() as http:
        with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
            await http.get(url)


async def test_a_refused_connection_is_a_connect_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: the port refuses
        async with client() as http:
            with pytest.raises(httpx.ConnectError):
                await http.get(f"http://127.0.0.1:{port}")


async def test_a_peer_that_reads_nothing_makes_a_large_write_time_out() -> None:
    async def never_reads(_: asyncio.StreamReader, __: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async with peer(never_reads) as url, client(timeout=0.5) as http:
        started = time.monotonic()
        with pytest.raises(httpx.WriteTimeout):
            await http.post(url, content=b"x" * (64 * 1024 * 1024))
        assert time.monotonic() - started < 2.0


async def test_a_large_write_waits_for_a_slow_reader_and_completes() -> None:
    received = 0

    async def reads_slowly(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        await reader.readuntil(b"\r\n\r\n")
        while received < 16 * 1024 * 1024:
            received += len(await reader.read(1024 * 1024))
            await asyncio.sleep(0.001)  # the client's writes pause and resume meanwhile
        writer.write(OK)
        await writer.drain()

    async with peer(reads_slowly) as url, client(timeout=5.0) as http:
        resp = await http.post(url, content=b"x" * (16 * 1024 * 1024))
        assert resp.status_code == 200
    assert received == 16 * 1024 * 1024


async def test_tls_is_verified_against_the_trusted_certificates(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    async with peer(answer_each, tls=served) as url:
        async with client() as http:  # the system's trust store: this certificate is unknown
            with pytest.raises(httpx.ConnectError):
                await http.get(url)
        async with client(verify=ssl.create_default_context(cafile=str(cert))) as http:
            resp = await http.get(url)
            assert resp.status_code == 200
            assert resp.extensions["network_stream"].get_extra_info("ssl_object") is not None


async def test_a_large_answer_over_tls_arrives_whole_through_the_read_ahead_bound(
    tmp_path: Path,
) -> None:
    cert, key = self_signed_certificate(tmp_path)
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    body = bytes(range(256)) * 8192  # 2 MiB, eight times the read-ahead bound

    async def large(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()

    trusting = client(verify=ssl.create_default_context(cafile=str(cert)))
    async with peer(large, tls=served) as url, trusting as http:
        resp = await http.get(url)
        assert resp.content == body


async def test_a_tls_handshake_that_never_completes_is_a_connect_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
        await reader.read()

    async with peer(silent) as plain:
        url = plain.replace("http://", "https://")
        async with client(timeout=0.3) as http:
            started = time.monotonic()
            with pytest.raises(httpx.ConnectTimeout):
                await http.get(url)
            assert time.monotonic() - started < 1.0


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.paused = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


def test_a_peer_that_floods_an_idle_connection_is_not_read_past_the_high_water_mark() -> None:
    connection, transport = _Connection(), _Transport()
    connection.connection_made(transport)
    for _ in range(5):
        connection.data_received(b"x" * (HIGH_WATER // 2))
        if transport.paused:
            break
    assert transport.paused  # the socket's own buffer and TCP's window hold the rest
    assert len(connection.buffer) <= HIGH_WATER + HIGH_WATER // 2
    while connection.buffer:
        connection.take(65536)
    assert not transport.paused
