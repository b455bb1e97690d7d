"""Clients that abuse the connection itself: huge heads, slow heads and bodies, not HTTP."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from app.sandbox.stand_in_videodb import StandInVideoDB
from app.server.protocol import MAX_HEAD_BYTES, REQUEST_READ_TIMEOUT_S
from harness.broker_process import BrokerProcess
from harness.servers import ThreadedServer
from tests.fakes.identity_provider import FakeIdentityProvider
from tests.integration.conftest import AUDIENCE, TOKEN_PATH, broker_settings
from tests.integration.raw_http import read_one_response

pytestmark = pytest.mark.integration


UPGRADE = (
    b"GET " + TOKEN_PATH.encode() + b" HTTP/1.1\r\nHost: b\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


def _connect(broker: BrokerProcess, timeout: float = 20.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", broker.port))
    sock.settimeout(timeout)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything until the broker closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _timed_read(sock: socket.socket, started: float) -> tuple[float, bytes]:
    """Seconds from `started` until the broker closed, and what it sent."""
    data = _read_all(sock)
    return time.monotonic() - started, data


def _problem(response: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    assert b"content-type: application/problem+json" in head.lower()
    assert b"x-content-type-options: nosniff" in head.lower()
    return status, json.loads(body)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_huge_request_head_is_refused_without_being_read_into_memory(
    broker: BrokerProcess,
) -> None:
    head = b"POST " + TOKEN_PATH.encode() + b" HTTP/1.1\r\nHost: b\r\n"
    line = b"X-Padding: " + b"a" * 65_000 + b"\r\n"
    before = _rss_kib(broker.proc.pid)
    sent = 0
    with _connect(broker) as sock:
        sock.sendall(head)
        try:  # 50 MB of headers on offer; the broker hangs up long before
            while sent < 50_000_000:
                sock.sendall(line)
                sent += len(line)
        except OSError:
            pass
    assert sent < 10_000_000
    assert _rss_kib(broker.proc.pid) - before < 20_000  # not the megabytes that were offered

    with _connect(broker) as sock:  # just over the limit, then wait for the answer
        sock.sendall(head + line[: MAX_HEAD_BYTES + 100])
        status, problem = _problem(_read_all(sock))
    assert status == 431
    assert problem["code"] == "request_header_too_large"
    assert str(MAX_HEAD_BYTES) in str(problem["detail"])


HEALTH = b"GET /healthz HTTP/1.1\r\nHost: b\r\n\r\n"


@pytest.mark.parametrize(
    "writes",
    [
        [HEALTH],  # a whole request, then the huge head in the same write
        # a request's head, then the end of its body and the huge head in one read
        [b"POST /healthz HTTP/1.1\r\nHost: b\r\nContent-Length: 5\r\n\r\n", b"hello"],
    ],
)
def test_a_huge_head_behind_another_request_is_refused_too(
    broker: BrokerProcess, writes: list[bytes]
) -> None:
    """The limit holds for every request on a connection, also one whose head arrives in the
    same read as the end of the request before it."""
    huge = b"GET /healthz HTTP/1.1\r\nHost: b\r\nX-Padding: " + b"a" * 50_000 + b"\r\n\r\n"
    with _connect(broker) as sock:
        for write in writes[:-1]:
            sock.sendall(write)
            time.sleep(0.3)  # read on its own
        sock.sendall(writes[-1] + huge)
        answers = _read_all(sock)
    # The first request's answer may or may not precede the refusal (the connection closes
    # as the huge head is seen); the huge one is never served.
    last = answers[answers.rindex(b"HTTP/1.1 ") :]
    status, problem = _problem(last)
    assert (status, problem["code"]) == (431, "request_header_too_large")
    assert answers.count(b"HTTP/1.1 ") <= 2


def test_a_partial_head_behind_a_whole_request_gets_the_read_deadline(
    broker: BrokerProcess,
) -> None:
    """A complete request and the start of the next in one write: the second is held to the
    read deadline like any other (it was held for the 75 s keep-alive instead)."""
    with _connect(broker, timeout=90) as sock:
        started = time.monotonic()
        sock.sendall(HEALTH + b"GET /healthz HTTP/1.1\r\nHost: b\r\n")
        assert read_one_response(sock).startswith(b"HTTP/1.1 200 ")
        elapsed, rest = _timed_read(sock, started)
    status, problem = _problem(rest)
    assert (status, problem["code"]) == (408, "request_timeout")
    # measured from the partial head's arrival; the upper bound leaves room for a busy machine
    assert REQUEST_READ_TIMEOUT_S - 0.5 < elapsed < REQUEST_READ_TIMEOUT_S + 10


def test_bytes_that_are_not_http_get_a_problem_too(broker: BrokerProcess) -> None:
    with _connect(broker) as sock:
        sock.sendall(b"\x16\x03\x01 this is not HTTP at all\r\n\r\n")
        status, problem = _problem(_read_all(sock))
    assert status == 400
    assert problem["code"] == "bad_request"
    refused = [r for r in broker.log_records() if r.get("event") == "request_refused"]
    assert problem["request_id"] in [r.get("request_id") for r in refused]  # findable in logs


def test_slow_clients_are_cut_off_and_everyone_else_is_served(
    broker: BrokerProcess, idp: FakeIdentityProvider, videodb: StandInVideoDB
) -> None:
    """Three slow clients at once, each ended when the read timeout runs out."""
    bearer = idp.issuers[-1].mint("patient-user", AUDIENCE)
    outcomes: dict[str, tuple[float, bytes]] = {}

    def blank_lines() -> None:  # a blank line every half second: bytes, but never a request
        with _connect(broker) as sock:
            started = time.monotonic()
            try:
                for _ in range(60):
                    sock.sendall(b"\r\n")
                    time.sleep(0.5)
            except OSError:
                pass
            outcomes["blank_lines"] = _timed_read(sock, started)

    def slow_head() -> None:  # a header line every half second, never the blank line
        with _connect(broker) as sock:
            started = time.monotonic()
            sock.sendall(b"POST " + TOKEN_PATH.encode() + b" HTTP/1.1\r\nHost: b\r\n")
            try:
                for i in range(60):
                    sock.sendall(b"X-Slow-%d: 1\r\n" % i)
                    time.sleep(0.5)
            except OSError:
                pass  # closed under us: the outcome says how
            outcomes["slow_head"] = _timed_read(sock, started)

    def slow_body() -> None:  # whole head, then part of the body and nothing more
        with _connect(broker) as sock:
            started = time.monotonic()
            sock.sendall(
                b"POST " + TOKEN_PATH.encode() + b" HTTP/1.1\r\nHost: b\r\n"
                b"Authorization: Bearer " + bearer.encode() + b"\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                b'{"expires_in": '
            )
            outcomes["slow_body"] = _timed_read(sock, started)

    clients = [threading.Thread(target=f) for f in (blank_lines, slow_head, slow_body)]
    for client in clients:
        client.start()
    time.sleep(1.0)
    with _connect(broker) as sock:  # meanwhile, an ordinary request on a kept-alive connection
        for _ in range(2):
            sock.sendall(
                b"POST " + TOKEN_PATH.encode() + b" HTTP/1.1\r\nHost: b\r\n"
                b"Authorization: Bearer " + bearer.encode() + b"\r\nContent-Length: 0\r\n\r\n"
            )
            assert read_one_response(sock).startswith(b"HTTP/1.1 200 ")
            time.sleep(2.0)  # idle, within uvicorn's keep-alive
    for client in clients:
        client.join(timeout=30)

    limit = REQUEST_READ_TIMEOUT_S
    for name, (elapsed, _) in outcomes.items():
        assert limit - 0.5 < elapsed < limit + 2.0, (name, elapsed)
    for name in ("blank_lines", "slow_head"):
        status, problem = _problem(outcomes[name][1])
        assert (status, problem["code"]) == (408, "request_timeout"), name
    assert outcomes["slow_body"][1] == b""  # closed: the app saw the client go
    exposed = httpx.get(broker.url + "/metrics").text
    assert 'broker_connections_refused_total{reason="request_too_slow"} 1.0' in exposed
    for reason in ("request_timeout", "request_too_slow"):  # operators can see each kind
        assert f'broker_connections_refused_total{{reason="{reason}"}}' in exposed


def test_a_websocket_upgrade_is_answered_as_plain_http(broker: BrokerProcess) -> None:
    """No WebSocket endpoints and no WebSocket layer: the upgrade gets our usual problem."""
    with _connect(broker) as sock:
        sock.sendall(UPGRADE)
        status, problem = _problem(read_one_response(sock))
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: b\r\n\r\n")  # and the connection
        assert read_one_response(sock).startswith(b"HTTP/1.1 200 ")  # serves on as HTTP
    assert (status, problem["code"]) == (405, "method_not_allowed")
    logged = broker.output()
    assert "Unsupported upgrade" not in logged
    assert "WebSocket library" not in logged


def test_idle_connections_close_quietly_after_the_keep_alive(
    idp: FakeIdentityProvider, videodb_server: tuple[StandInVideoDB, ThreadedServer]
) -> None:
    """New or kept-alive, a connection that sends nothing is closed with no answer."""
    _, server = videodb_server
    process = BrokerProcess(broker_settings(idp, server.url), args=("--keep-alive", "2"))
    process.wait_ready()
    try:
        with _connect(process) as fresh, _connect(process) as used:
            started = time.monotonic()
            used.sendall(b"GET /healthz HTTP/1.1\r\nHost: b\r\n\r\n")
            assert read_one_response(used).startswith(b"HTTP/1.1 200 ")
            for sock in (fresh, used):
                elapsed, answer = _timed_read(sock, started)
                assert answer == b""
                assert 1.5 < elapsed < 4.0
    finally:
        assert process.terminate() == 0
