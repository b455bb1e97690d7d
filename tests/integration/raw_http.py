"""HTTP/1.1 read by hand from a raw socket, for tests that watch the connection itself."""

from __future__ import annotations

import socket


def read_one_response(sock: socket.socket) -> bytes:
    """One whole response on a kept-alive connection (head, then Content-Length bytes)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.lower().split(b"\r\n")
        if line.startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body
