"""The kept transport (aiohttp under httpx) on real loopback sockets: aiohttp's failures told as
httpcore's, so that "never sent" still means never sent; nothing a peer leaves on a kept
connection read as the next call's answer; no cookie, no trace header, no retry of aiohttp's
own; the environment's proxies (HTTPS_PROXY through a CONNECT tunnel, NO_PROXY) honoured.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from app.errors import UpstreamTimeout, UpstreamUnavailable
from app.videodb.client import (
    UPSTREAM_TOKEN_PATH,
    CookielessClient,
    VideoDBClient,
    build_http_client,
)
from tests.fakes.tls import self_signed_certificate
from tests.videodb.test_client_on_sockets import (
    API_KEY,
    Handler,
    answer,
    counting,
    peer,
    read_request,
    videodb_client,
)

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "SSL_CERT_FILE")


@pytest.fixture(autouse=True)
def plain_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No proxy and no CA bundle of the machine's: each test sets what it means."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


def tls_pair(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context for 127.0.0.1 and the certificate a client must be told to trust."""
    cert, key = self_signed_certificate(directory)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    return tls, cert


async def _serve_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        try:
            await read_request(reader)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            return
        writer.write(answer())
        await writer.drain()


def tunnelling(connects: list[bytes], refuse: bool = False) -> Handler:
    """An HTTP proxy that opens CONNECT tunnels (or refuses them), recording each request line."""

    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65_536):
                dst.write(data)
                await dst.drain()
        except ConnectionError:
            pass
        finally:
            dst.close()

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        connects.append(head.split(b"\r\n")[0])
        if refuse:
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return
        host, port = head.split()[1].decode().rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    return proxy


def after_request(act: Callable[[asyncio.StreamWriter], None]) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        act(writer)

    return handler


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _half_an_answer(writer: asyncio.StreamWriter) -> None:
    writer.write(answer()[:-3])
    writer.close()


async def _silent(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
    await reader.read()


@asynccontextmanager
async def refusing_port() -> AsyncIterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: the port refuses
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@asynccontextmanager
async def untrusted_tls(tmp_path: Path) -> AsyncIterator[str]:
    tls, _ = tls_pair(tmp_path)
    async with peer(_serve_forever, tls=tls) as url:
        yield url


@asynccontextmanager
async def proxy_refusing_tunnels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[str]:
    tls, cert = tls_pair(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    async with peer(tunnelling([], refuse=True)) as proxy, peer(_serve_forever, tls=tls) as url:
        monkeypatch.setenv("HTTPS_PROXY", proxy)
        yield url


Peer = Callable[[Path, pytest.MonkeyPatch], AbstractAsyncContextManager[str]]

# Each failure: the httpx exception httpcore raises for it, and whether the request may have
# reached VideoDB (False: safe to repeat any call; app/videodb/retries.py relies on it).
FAILURES: dict[str, tuple[Peer, type[httpx.TransportError], bool]] = {
    "refused": (lambda _, __: refusing_port(), httpx.ConnectError, False),
    "untrusted-certificate": (lambda tmp, _: untrusted_tls(tmp), httpx.ConnectError, False),
    "hung-up-after-the-request": (
        lambda _, __: peer(after_request(lambda w: w.close())),
        httpx.RemoteProtocolError,
        True,
    ),
    "reset-after-the-request": (
        lambda _, __: peer(after_request(_reset)),
        httpx.ReadError,
        True,
    ),
    "malformed-answer": (
        lambda _, __: peer(after_request(lambda w: w.write(b"HTTP/1.1 2000 OK\r\n\r\n"))),
        httpx.RemoteProtocolError,
        True,
    ),
    "hung-up-mid-body": (
        lambda _, __: peer(after_request(_half_an_answer)),
        httpx.RemoteProtocolError,
        True,
    ),
    "no-answer-within-the-read-timeout": (
        lambda _, __: peer(_silent),
        httpx.ReadTimeout,
        True,
    ),
    "proxy-refuses-the-tunnel": (proxy_refusing_tunnels, httpx.ProxyError, True),
}


@pytest.mark.parametrize("name", sorted(FAILURES))
async def test_each_failure_is_told_as_httpcore_tells_it(
    name: str, tmp_path: Path, plain_environment: pytest.MonkeyPatch
) -> None:
    serving, told, reached = FAILURES[name]
    async with serving(tmp_path, plain_environment) as url:
        http = build_http_client(0.5)  # the read timeout; the call's deadline is longer
        try:
            with pytest.raises(httpx.TransportError) as raised:
                await http.post(url + UPSTREAM_TOKEN_PATH, content=b"{}")
            client = VideoDBClient(http, SecretStr(API_KEY), url, 10.0)
            with pytest.raises((UpstreamUnavailable, UpstreamTimeout)) as failed:
                await client.mint("ada", 600)
        finally:
            await http.aclose()
    assert type(raised.value) is told
    assert getattr(failed.value, "reached", None) is reached
    assert isinstance(failed.value, UpstreamTimeout) is issubclass(told, httpx.TimeoutException)


async def test_a_wait_for_the_pool_past_its_timeout_is_never_sent() -> None:
    http = CookielessClient(
        timeout=httpx.Timeout(5.0, pool=0.2), limits=httpx.Limits(max_connections=1)
    )
    arrived = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
        arrived.set()
        await reader.read()

    async with peer(silent) as url:
        holding = asyncio.create_task(http.post(url, content=b"{}"))
        await arrived.wait()  # it holds the one connection
        try:
            with pytest.raises(httpx.ConnectTimeout):  # httpcore's PoolTimeout: never sent too
                await http.post(url, content=b"{}")
        finally:
            holding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await holding
            await http.aclose()


async def _until_read(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        await read_request(reader)


# Bytes a peer sends after a whole answer, and when: they must never be read as the answer
# to the next call on that connection, which goes to a new one instead.
LEFTOVERS = ["in-the-read-that-ends-the-answer", "with-the-body-after-the-head", "while-idle"]


@pytest.mark.parametrize("when", LEFTOVERS)
async def test_bytes_after_an_answer_are_never_the_next_calls_answer(when: str) -> None:
    sent = asyncio.Event()
    served = 0

    async def twice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        served += 1
        await read_request(reader)
        first, stale = answer(f"st-first-{served}"), answer("st-stale")
        if when == "in-the-read-that-ends-the-answer":
            writer.write(first + stale)
        elif when == "with-the-body-after-the-head":
            head, _, body = first.partition(b"\r\n\r\n")
            writer.write(head + b"\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)  # apart or together, the outcome must be the same
            writer.write(body + stale)
        else:
            writer.write(first)
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(stale)
        await writer.drain()  # on loopback: in the client's socket buffer from here on
        sent.set()
        await _until_read(reader)  # a request on this connection would get no other answer

    handler, opened = counting(twice)
    async with peer(handler) as url, videodb_client(url) as client:
        assert (await client.mint("ada", 600)).token == "st-first-1"
        await sent.wait()
        assert (await client.mint("bob", 600)).token == "st-first-2"
    assert len(opened) == 2


async def test_a_read_whose_connection_fails_is_not_repeated_by_aiohttp() -> None:
    """aiohttp repeats a GET once when its connection fails; every attempt is the retry
    policy's to count and time, so the transport makes none of its own."""
    requests: list[bytes] = []

    async def hangs_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await read_request(reader))
        writer.close()

    async with peer(hangs_up) as url, videodb_client(url) as client:
        with pytest.raises(UpstreamUnavailable):
            await client.get_capture_session("cap-1")
    assert len(requests) == 1


async def test_no_cookie_is_kept_and_no_trace_header_sent_on_the_wire() -> None:
    heads: list[bytes] = []

    async def sets_cookies(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                heads.append(await read_request(reader))
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            cookie = b"Set-Cookie: session=user-%d; Path=/\r\n" % len(heads)
            writer.write(answer().replace(b"\r\n", b"\r\n" + cookie, 1))
            await writer.drain()

    # by name: cookie jars (aiohttp's among them) keep no cookie of an IP address
    async with (
        peer(sets_cookies) as url,
        videodb_client(url.replace("127.0.0.1", "localhost")) as client,
    ):
        await client.mint("ada", 600)
        await client.mint("bob", 600)
    first = heads[0].lower()
    assert first.count(b"host: localhost:") == 1  # one Host, the URL's, however built
    assert first.count(b"content-length: ") == 1
    assert b"accept-encoding: identity" in first  # nothing to inflate before the cap counts
    second = heads[1].lower()
    assert b"cookie" not in second
    assert b"traceparent" not in second
    assert b"tracestate" not in second


async def test_a_read_carries_no_body_and_no_content_length_on_the_wire() -> None:
    heads: list[bytes] = []

    async def records(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await read_request(reader))
        writer.write(answer())  # any record: `data` is what a session read returns
        await writer.drain()

    async with peer(records) as url, videodb_client(url) as client:
        record = await client.get_capture_session("cap-1")
    head = heads[0].lower()
    assert head.startswith(b"get /collection/default/capture/session/cap-1 http/1.1\r\n")
    assert head.count(b"host: 127.0.0.1:") == 1
    assert b"content-length" not in head  # as httpx sends a GET: no body, no length
    assert b"content-type" not in head
    assert head.endswith(b"\r\n\r\n")  # nothing after the head
    assert record["token"] == "st-fresh"


async def test_https_proxy_from_the_environment_tunnels_and_no_proxy_bypasses_it(
    tmp_path: Path, plain_environment: pytest.MonkeyPatch
) -> None:
    tls, cert = tls_pair(tmp_path)
    plain_environment.setenv("SSL_CERT_FILE", str(cert))  # the private CA, through the tunnel
    connects: list[bytes] = []
    async with peer(tunnelling(connects)) as proxy, peer(_serve_forever, tls=tls) as url:
        plain_environment.setenv("HTTPS_PROXY", proxy)
        async with videodb_client(url) as client:
            assert (await client.mint("ada", 600)).token == "st-fresh"
        assert connects == [b"CONNECT " + url.removeprefix("https://").encode() + b" HTTP/1.1"]
        plain_environment.setenv("NO_PROXY", "127.0.0.1")
        async with videodb_client(url) as client:
            assert (await client.mint("bob", 600)).token == "st-fresh"
        assert len(connects) == 1  # straight to VideoDB this time
