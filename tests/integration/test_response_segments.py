"""A response leaves the broker in one write: its head and body in one TCP segment, counted by
the client's kernel (TCP_INFO), on a real connection to the broker process."""

from __future__ import annotations

import socket
import struct

import pytest

from harness.broker_process import BrokerProcess
from tests.integration.conftest import TOKEN_PATH
from tests.integration.raw_http import read_one_response

pytestmark = pytest.mark.integration

# struct tcp_info (linux/tcp.h): tcpi_data_segs_in, the segments received that carried data
# (Linux 4.6 and later), is the u32 at byte 152.
_DATA_SEGS_IN = struct.Struct("=I")
_DATA_SEGS_IN_OFFSET = 152


def _data_segments_in(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    assert len(info) >= _DATA_SEGS_IN_OFFSET + 4, "this kernel's tcp_info lacks data_segs_in"
    return int(_DATA_SEGS_IN.unpack_from(info, _DATA_SEGS_IN_OFFSET)[0])


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"GET /healthz HTTP/1.1\r\nHost: b\r\n\r\n", id="health"),
        pytest.param(  # refused by the token route: a problem document
            b"POST " + TOKEN_PATH.encode() + b" HTTP/1.1\r\nHost: b\r\nContent-Length: 2\r\n"
            b"Content-Type: application/json\r\n\r\n{}",
            id="token-refused",
        ),
    ],
)
def test_each_response_arrives_as_one_segment(broker: BrokerProcess, request_bytes: bytes) -> None:
    with socket.create_connection(("127.0.0.1", broker.port), timeout=20) as sock:
        for _ in range(3):  # kept alive: every response, not only the first
            before = _data_segments_in(sock)
            sock.sendall(request_bytes)
            assert read_one_response(sock).startswith(b"HTTP/1.1 ")
            assert _data_segments_in(sock) - before == 1
