"""The VideoDB client against peers on real loopback sockets: every way a peer can fail ends
in the contract's 502/503/504 on time, answers are read no further than the cap, a burst
queues for the bounded connections, and a connection carries no answer over to another call.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from app.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from app.videodb.answers import MAX_RESPONSE_BYTES
from app.videodb.client import (
    MAX_CONNECTIONS,
    UPSTREAM_TOKEN_PATH,
    VideoDBClient,
    build_http_client,
)
from app.videodb.wiring import start_videodb
from tests.conftest import SettingsFactory
from tests.fakes.tls import self_signed_certificate

API_KEY = "sk-sockets-0123456789abcdef"
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def answer(token: str = "st-fresh", extra: bytes = b"") -> bytes:
    """A whole HTTP answer carrying a token, as VideoDB gives one."""
    body = json.dumps({"success": True, "data": {"token": token, "expires_in": 600}}).encode()
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body + extra


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
    """Read requests one after another and answer each with `respond`, until the client goes."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await read_request(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            await respond(writer)
            await writer.drain()

    return handler


def counting(handler: Handler) -> tuple[Handler, list[int]]:
    opened: list[int] = []

    async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        opened.append(1)
        await handler(reader, writer)

    return counted, opened


@asynccontextmanager
async def videodb_client(url: str, deadline: float = 2.0) -> AsyncIterator[VideoDBClient]:
    http = build_http_client(deadline)
    try:
        yield VideoDBClient(http, SecretStr(API_KEY), url, deadline)
    finally:
        await http.aclose()


async def _answer_ok(writer: asyncio.StreamWriter) -> None:
    writer.write(answer())


async def test_calls_share_one_kept_alive_connection_and_send_what_the_contract_says() -> None:
    requests: list[bytes] = []

    async def recording(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                requests.append(await read_request(reader))
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            writer.write(answer())
            await writer.drain()

    handler, opened = counting(recording)
    async with peer(handler) as url, videodb_client(url) as client:
        for user in ("ada", "bob", "cy"):
            assert (await client.mint(user, 600)).token == "st-fresh"
    assert len(opened) == 1
    head, _, body = requests[1].partition(b"\r\n\r\n")
    assert head.startswith(b"POST " + UPSTREAM_TOKEN_PATH.encode() + b" HTTP/1.1")
    assert b"x-access-token: " + API_KEY.encode() in head.lower()
    assert b"x-videodb-client: videodb-token-broker/" in head.lower()
    assert b"cookie" not in head.lower()
    assert json.loads(body) == {"user_id": "bob", "expires_in": 600}


async def test_a_kept_alive_connection_the_peer_closed_is_not_an_error() -> None:
    async def one_answer_then_close(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader)
        writer.write(answer())
        await writer.drain()
        writer.close()  # the keep-alive timeout of a server, while the client is idle

    async with peer(one_answer_then_close) as url, videodb_client(url) as client:
        await client.mint("ada", 600)
        await asyncio.sleep(0.1)
        await client.mint("bob", 600)  # on a new connection


async def test_a_peer_that_never_answers_is_a_timeout_on_time() -> None:
    async def silent(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
        await reader.read()

    async with peer(silent) as url, videodb_client(url, deadline=0.3) as client:
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout):
            await client.mint("ada", 600)
        assert time.monotonic() - started < 2.0


async def test_a_peer_trickling_its_answer_is_cut_off_at_the_overall_deadline() -> None:
    """Each byte well inside the read timeout, the whole answer far past the deadline."""

    async def trickles(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        for byte in answer():
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.05)

    async with peer(trickles) as url, videodb_client(url, deadline=0.5) as client:
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout):
            await client.mint("ada", 600)
        assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("sent", [answer()[:-1], b""], ids=["mid-answer", "without-answering"])
async def test_a_peer_that_hangs_up_early_is_unavailable(sent: bytes) -> None:
    async def hangs_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(sent)
        writer.close()

    async with peer(hangs_up) as url, videodb_client(url) as client:
        with pytest.raises(UpstreamUnavailable):
            await client.mint("ada", 600)


async def test_a_reset_connection_is_unavailable() -> None:
    async def resets(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async with peer(resets) as url, videodb_client(url) as client:
        with pytest.raises(UpstreamUnavailable):
            await client.mint("ada", 600)


async def test_a_refused_connection_is_unavailable_at_once() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: the port refuses
        async with videodb_client(f"http://127.0.0.1:{port}") as client:
            started = time.monotonic()
            with pytest.raises(UpstreamUnavailable):
                await client.mint("ada", 600)
            assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\n{}",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Padding: " + b"a" * 200_000 + b"\r\n\r\n",
    ],
    ids=["two-lengths", "length-and-chunked", "bad-status", "not-http", "bad-header", "huge-head"],
)
async def test_a_malformed_answer_is_never_believed(raw: bytes) -> None:
    async def malformed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(raw)
        await writer.drain()
        await asyncio.sleep(0.5)
        writer.close()

    async with peer(malformed) as url, videodb_client(url) as client:
        with pytest.raises((UpstreamUnavailable, UpstreamError)):
            await client.mint("ada", 600)


async def test_an_endless_answer_is_read_no_further_than_the_cap() -> None:
    sent = 0

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 16_384
        try:
            while sent < 200_000_000:
                writer.write(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                await writer.drain()
                sent += len(chunk)
        except ConnectionError:
            pass

    async with peer(endless) as url, videodb_client(url) as client:
        with pytest.raises(UpstreamError):
            await client.mint("ada", 600)
    assert sent < 50 * MAX_RESPONSE_BYTES + 10_000_000  # stopped, not read to the end


def gzipped(body: bytes) -> bytes:
    """A whole HTTP answer whose body VideoDB compressed although asked for identity."""
    packed = gzip.compress(body)
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
    return head + b"Content-Length: %d\r\n\r\n" % len(packed) + packed


async def test_an_answer_compressed_unasked_is_read_inflated_and_capped_inflated() -> None:
    token = json.dumps({"success": True, "data": {"token": "st-zipped", "expires_in": 600}})
    # within the cap on the wire, some thousand times the cap once inflated
    bomb = b'{"success": true, "data": {"pad": "' + b"0" * (100 * MAX_RESPONSE_BYTES) + b'"}}'
    bodies = iter([token.encode(), bomb])

    async def compressing(writer: asyncio.StreamWriter) -> None:
        writer.write(gzipped(next(bodies)))

    async with peer(answering(compressing)) as url, videodb_client(url) as client:
        assert (await client.mint("ada", 600)).token == "st-zipped"
        with pytest.raises(UpstreamError, match="oversized"):
            await client.mint("bob", 600)


async def test_a_large_answer_is_kept_to_the_cap_and_handed_over_in_small_pieces() -> None:
    """Whatever aiohttp buffered, the body reaches httpx 16 KiB at a time (a compressed piece
    is inflated whole), and the client keeps no more than the cap and one byte."""
    big = b"x" * (6 * MAX_RESPONSE_BYTES)
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big)

    async def all_at_once(writer: asyncio.StreamWriter) -> None:
        writer.write(head + big)

    async with peer(answering(all_at_once)) as url, videodb_client(url) as client:
        answer = await client.call("GET", "/big", None, None)
        assert len(answer.body) == MAX_RESPONSE_BYTES + 1
        http = build_http_client(2.0)
        try:
            response = await http.send(http.build_request("GET", url + "/big"), stream=True)
            await asyncio.sleep(0.2)  # the whole answer in aiohttp's buffer
            pieces = [len(piece) async for piece in response.aiter_raw()]
            await response.aclose()
        finally:
            await http.aclose()
    assert sum(pieces) == len(big)
    assert max(pieces) <= 16 * 1024


async def test_a_cancelled_call_never_leaves_its_answer_for_the_next() -> None:
    answers = iter(["st-late", "st-next"])

    async def slow_then_fast(writer: asyncio.StreamWriter) -> None:
        token = next(answers)
        await asyncio.sleep(0.3 if token == "st-late" else 0)
        writer.write(answer(token))

    handler, _ = counting(answering(slow_then_fast))
    async with peer(handler) as url, videodb_client(url) as client:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):  # the client went away
                await client.mint("ada", 600)
        await asyncio.sleep(0.4)  # the late answer has arrived by now
        assert (await client.mint("bob", 600)).token == "st-next"


@pytest.mark.parametrize("setting", [None, 4])  # the default, and BROKER_UPSTREAM_MAX_CONNECTIONS
async def test_a_burst_queues_for_the_bounded_connections_and_is_served(
    setting: int | None, make_settings: SettingsFactory
) -> None:
    async def slowish(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.005)
        writer.write(answer())

    serve = answering(slowish)
    open_now, peak, opened = 0, 0, 0

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now, peak, opened
        open_now, opened = open_now + 1, opened + 1
        peak = max(peak, open_now)
        try:
            await serve(reader, writer)
        finally:
            open_now -= 1

    limit = {} if setting is None else {"upstream_max_connections": setting}
    async with peer(tracked) as url, AsyncExitStack() as stack:
        # as the broker starts it, from its settings
        settings = make_settings(videodb_api=url, upstream_timeout=10, **limit)
        client, _ = await start_videodb(settings, stack)
        for _ in range(2):  # the second burst finds the connections of the first kept alive
            minted = await asyncio.gather(*(client.mint(f"u{i}", 600) for i in range(500)))
            assert {m.token for m in minted} == {"st-fresh"}
    connections = MAX_CONNECTIONS if setting is None else setting
    assert peak == connections  # the burst used every connection allowed, and no more
    assert opened <= connections + 10  # reused, not opened and closed call after call


async def test_tls_is_verified_and_an_untrusted_peer_gets_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed_certificate(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    received: list[bytes] = []

    async def recording(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            received.append(await read_request(reader))
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            return
        writer.write(answer())
        await writer.drain()

    async with peer(recording, tls=tls) as url:
        async with videodb_client(url) as client:
            with pytest.raises(UpstreamUnavailable):
                await client.mint("ada", 600)
        assert received == []  # the handshake failed before a byte of the request
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the operator's private CA
        async with videodb_client(url) as client:
            assert (await client.mint("ada", 600)).token == "st-fresh"


def test_the_client_follows_no_redirect_and_keeps_no_cookie() -> None:
    http = build_http_client(1.0)
    assert not http.follow_redirects
    http.cookies.extract_cookies(
        httpx.Response(
            200,
            headers={"Set-Cookie": "s=1"},
            request=httpx.Request("GET", "https://videodb.test/"),
        )
    )
    assert list(http.cookies.jar) == []
