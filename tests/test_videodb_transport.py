"""The VideoDB client's HTTP/1.1 transport on real loopback sockets: every way a peer can
fail ends in the httpx exception httpx's own transport gives, nothing waits past its
timeout, and a connection is reused only when it is safe to."""

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

from app.videodb_transport import MAX_HEAD_BYTES, VideoDBTransport
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


def answering(respond: Callable[[asyncio.StreamWriter], Awaitable[None]]) -> Handler:
    """A handler that reads requests one after another and answers each with `respond`,
    until the client goes away."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await read_request(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            await respond(writer)
            await writer.drain()

    return handler


async def _ok(writer: asyncio.StreamWriter) -> None:
    writer.write(OK)


answer_each = answering(_ok)


def client(timeout: float = 2.0, verify: ssl.SSLContext | bool = True) -> httpx.AsyncClient:
    transport = VideoDBTransport(
        limits=httpx.Limits(max_connections=4), verify=verify, max_body_bytes=4 * 1024 * 1024
    )
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
        assert (await http.post(url)).status_code == 200
        await asyncio.sleep(0.1)
        assert (await http.post(url)).status_code == 200  # a new connection, not an error


async def test_a_peer_that_never_answers_is_a_read_timeout_on_time() -> None:
    async def silent(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
        await reader.read()

    async with peer(silent) as url, client(timeout=0.3) as http:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            await http.post(url)
        assert time.monotonic() - started < 1.0


async def test_a_peer_that_stops_mid_answer_is_a_read_timeout_on_time() -> None:
    async def stalls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK[:30])
        await reader.read()

    async with peer(stalls) as url, client(timeout=0.3) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post(url)


@pytest.mark.parametrize("sent", [OK[:-1], b""], ids=["mid-answer", "without-answering"])
async def test_a_peer_that_closes_early_is_a_protocol_error(sent: bytes) -> None:
    async def hangs_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(sent)
        writer.close()

    async with peer(hangs_up) as url, client() as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post(url)


async def test_a_reset_connection_is_a_read_error() -> None:
    async def resets(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async with peer(resets) as url, client() as http:
        with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
            await http.post(url)


async def test_a_refused_connection_is_a_connect_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: the port refuses
        async with client() as http:
            with pytest.raises(httpx.ConnectError):
                await http.post(f"http://127.0.0.1:{port}")


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
                await http.post(url)
        async with client(verify=ssl.create_default_context(cafile=str(cert))) as http:
            resp = await http.post(url)
            assert resp.status_code == 200


async def test_a_large_answer_over_tls_arrives_whole(
    tmp_path: Path,
) -> None:
    cert, key = self_signed_certificate(tmp_path)
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    body = bytes(range(256)) * 8192  # 2 MiB, in many TLS records

    async def large(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()

    trusting = client(verify=ssl.create_default_context(cafile=str(cert)))
    async with peer(large, tls=served) as url, trusting as http:
        resp = await http.post(url)
        assert resp.content == body


async def test_a_tls_handshake_that_never_completes_is_a_connect_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
        await reader.read()

    async with peer(silent) as plain:
        url = plain.replace("http://", "https://")
        async with client(timeout=0.3) as http:
            started = time.monotonic()
            with pytest.raises(httpx.ConnectTimeout):
                await http.post(url)
            assert time.monotonic() - started < 1.0


def counting(handler: Handler) -> tuple[Handler, list[int]]:
    """`handler`, counting the connections it is given."""
    opened: list[int] = []

    async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        opened.append(1)
        await handler(reader, writer)

    return counted, opened


async def test_a_response_head_past_the_bound_is_refused_without_reading_on() -> None:
    async def endless_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for _ in range(MAX_HEAD_BYTES // 1000 + 2):
            writer.write(b"X-Filler: " + b"a" * 1000 + b"\r\n")
            await writer.drain()
        await reader.read()

    async with peer(endless_headers) as url, client() as http:
        with pytest.raises(httpx.RemoteProtocolError, match="headers too large"):
            await http.post(url)


async def test_a_body_past_the_bound_is_cut_there_and_its_connection_not_reused() -> None:
    async def large(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100000)

    handler, opened = counting(answering(large))
    transport = VideoDBTransport(limits=httpx.Limits(), max_body_bytes=1000)
    async with peer(handler) as url, httpx.AsyncClient(transport=transport) as http:
        for _ in range(2):
            resp = await http.post(url)
            assert len(resp.content) == 1001  # one byte more than allowed: the caller can tell
    assert len(opened) == 2


async def test_bytes_nobody_asked_for_close_an_idle_connection() -> None:
    async def chatty(writer: asyncio.StreamWriter) -> None:
        writer.write(OK)
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(OK)  # an answer to nothing; read as the next one's, it would lie

    handler, opened = counting(answering(chatty))
    async with peer(handler) as url, client() as http:
        for _ in range(2):
            assert (await http.post(url)).status_code == 200
            await asyncio.sleep(0.1)
    assert len(opened) == 2


async def test_two_answers_in_one_read_close_the_connection() -> None:
    async def doubled(writer: asyncio.StreamWriter) -> None:
        writer.write(OK + OK)

    handler, opened = counting(answering(doubled))
    async with peer(handler) as url, client() as http:
        for _ in range(2):
            assert (await http.post(url)).json() == {}
    assert len(opened) == 2


async def test_a_request_cancelled_mid_exchange_never_leaves_its_answer_for_the_next() -> None:
    answers = iter([b"late", b"next"])

    async def slow_then_fast(writer: asyncio.StreamWriter) -> None:
        body = next(answers)
        await asyncio.sleep(0.3 if body == b"late" else 0)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n" + body)

    handler, opened = counting(answering(slow_then_fast))
    async with peer(handler) as url, client() as http:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):  # the broker's deadline for one request
                await http.post(url)
        await asyncio.sleep(0.4)  # the late answer has arrived by now, to a closed socket
        assert (await http.post(url)).content == b"next"
    assert len(opened) == 2


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\n{}",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    ],
    ids=["two-lengths", "length-and-chunked", "bad-status", "not-http", "bad-header", "upgrade"],
)
async def test_a_malformed_answer_is_a_protocol_error(answer: bytes) -> None:
    async def malformed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer)
        await writer.drain()
        await reader.read()

    async with peer(malformed) as url, client() as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post(url)


@pytest.mark.parametrize(
    ("answer", "reused"),
    [
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\n1\r\n}\r\n0\r\n\r\n", 1),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", 1),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}", 2),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}", 2),
    ],
    ids=["chunked", "interim-first", "connection-close", "http-1.0"],
)
async def test_every_framing_of_an_answer_reads_whole_and_reuses_only_when_allowed(
    answer: bytes, reused: int
) -> None:
    async def framed(writer: asyncio.StreamWriter) -> None:
        writer.write(answer)

    handler, opened = counting(answering(framed))
    async with peer(handler) as url, client() as http:
        for _ in range(2):
            assert (await http.post(url)).json() == {}
    assert len(opened) == reused


@pytest.mark.parametrize(
    "head",
    [b"HTTP/1.1 200 OK\r\n\r\n", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\n"],
    ids=["no-length", "not-chunked"],
)
async def test_a_body_that_ends_with_the_connection_is_read_whole(head: bytes) -> None:
    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(head + b'{"a":')
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"1}")
        writer.close()

    async with peer(until_close) as url, client() as http:
        assert (await http.post(url)).json() == {"a": 1}


async def test_a_header_that_would_split_the_request_is_refused_without_its_value() -> None:
    async with peer(answer_each) as url, client() as http:
        with pytest.raises(httpx.LocalProtocolError) as refused:
            await http.post(url, headers={"x-access-token": "sk-secret\r\nX-Injected: 1"})
    assert "sk-secret" not in str(refused.value)


async def test_a_request_waits_for_a_free_connection_at_most_the_pool_timeout() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(0.5)
        writer.write(OK)
        await writer.drain()

    transport = VideoDBTransport(limits=httpx.Limits(max_connections=1))
    timeout = httpx.Timeout(2.0, pool=0.1)
    async with peer(slow) as url, httpx.AsyncClient(transport=transport, timeout=timeout) as http:
        first = asyncio.create_task(http.post(url))
        await asyncio.sleep(0.05)
        with pytest.raises(httpx.PoolTimeout):
            await http.post(url)
        assert (await first).status_code == 200


async def test_a_connection_idle_past_the_keepalive_expiry_is_not_reused() -> None:
    handler, opened = counting(answer_each)
    transport = VideoDBTransport(limits=httpx.Limits(keepalive_expiry=0.05))
    async with peer(handler) as url, httpx.AsyncClient(transport=transport) as http:
        assert (await http.post(url)).status_code == 200
        assert (await http.post(url)).status_code == 200  # at once: the same connection
        await asyncio.sleep(0.1)
        assert (await http.post(url)).status_code == 200
    assert len(opened) == 2


async def test_only_http_and_https_are_spoken() -> None:
    async with client() as http:
        with pytest.raises(httpx.UnsupportedProtocol):
            await http.post("ftp://127.0.0.1/")


async def test_a_slow_but_steady_answer_is_not_a_read_timeout() -> None:
    async def trickles(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        for byte in OK:  # the whole answer takes twice the read timeout, no gap reaches it
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.6 / len(OK))

    async with peer(trickles) as url, client(timeout=0.3) as http:
        assert (await http.post(url)).json() == {}


async def test_a_streamed_request_body_is_sent_chunked() -> None:
    received: list[bytes] = []

    async def records(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.readuntil(b"0\r\n\r\n"))
        writer.write(OK)
        await writer.drain()

    async def parts() -> AsyncIterator[bytes]:
        yield b'{"user_id": '
        yield b'"ada"}'

    async with peer(records) as url, client() as http:
        assert (await http.post(url, content=parts())).status_code == 200
    head, body = received[0].split(b"\r\n\r\n", 1)
    assert b"transfer-encoding: chunked" in head.lower()
    assert body == b'12\r\n{"user_id": "ada"}\r\n0\r\n\r\n'


@pytest.mark.parametrize(
    ("method", "headers"),
    [("HEAD", {}), ("POST", {"bad name": "x"}), ("PO ST", {})],
    ids=["head", "header-name", "method"],
)
async def test_what_this_transport_does_not_speak_is_refused_before_sending(
    method: str, headers: dict[str, str]
) -> None:
    handler, opened = counting(answer_each)
    async with peer(handler) as url, client() as http:
        with pytest.raises((httpx.UnsupportedProtocol, httpx.LocalProtocolError)):
            await http.request(method, url, headers=headers)
    assert opened == []


async def test_an_idle_connection_below_the_busy_one_is_closed_once_expired() -> None:
    ended = 0

    async def counts_ends(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal ended
        await answer_each(reader, writer)
        ended += 1

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.05)  # so that two requests need two connections
        await counts_ends(reader, writer)

    transport = VideoDBTransport(limits=httpx.Limits(keepalive_expiry=0.2))
    async with peer(slow) as url, httpx.AsyncClient(transport=transport) as http:
        await asyncio.gather(http.post(url), http.post(url))
        for _ in range(8):  # the newest connection serves these; the other one idles
            assert (await http.post(url)).status_code == 200
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.05)
        assert ended == 1  # closed by us, while the one in use stays open


async def test_an_idle_connection_keeps_nothing_of_the_answer_it_carried() -> None:
    token = b'{"token": "st-kept-nowhere"}'

    async def answers_a_token(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(token) + token)
        await writer.drain()
        await reader.read()

    transport = VideoDBTransport(limits=httpx.Limits())
    async with peer(answers_a_token) as url, httpx.AsyncClient(transport=transport) as http:
        assert (await http.post(url)).content == token
        (idle,) = [c for pool in transport._idle.values() for c in pool]
        assert not idle.closed  # kept alive for the next call,
        assert idle.body == bytearray()  # without the last user's token
        assert idle.headers == []


async def test_many_concurrent_requests_share_at_most_the_bounded_connections() -> None:
    async def slowish(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.005)
        writer.write(OK)

    handler, opened = counting(answering(slowish))
    async with peer(handler) as url, client() as http:  # max_connections=4
        answers = await asyncio.gather(*(http.post(url) for _ in range(100)))
    assert [a.status_code for a in answers] == [200] * 100
    assert len(opened) == 4
