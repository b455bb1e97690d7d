"""A server that breaks HTTP itself, the way a real VideoDB or its load balancer can.

The ASGI stand-ins always answer with well-formed HTTP; these faults live below that: a
connection closed or reset after the request, a body cut short, an answer that is not HTTP,
a body that trickles in a byte at a time, headers and then silence, or no answer at all (a
hung collector: the request accepted and read, nothing ever sent). Every answer it does send
echoes the key and carries an st- prefix, so a leak would show.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

from app.sandbox.loopback import base_url, bind_loopback

MODES = ("close", "reset", "truncated", "not_http", "huge_header", "trickle", "stall", "silent")
_ECHO = '{"success": true, "data": {"token": "st-cut-short-%s", "message": "key %s'


class BrokenHTTPServer:
    """Reads each request in full, then misbehaves as `mode` says; counts the requests."""

    def __init__(self, mode: str, api_key: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.mode = mode
        self.api_key = api_key
        self.requests = 0
        self._sock = bind_loopback(0)
        self._sock.listen(64)
        self.url = base_url(self._sock)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> BrokenHTTPServer:
        """Accept connections in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting and close the port."""
        self._stopped.set()
        self._sock.close()
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            if not self._read_request(conn):
                return
            self.requests += 1
            with contextlib.suppress(OSError):  # the broker gave up first: its deadline
                self._misbehave(conn)

    @staticmethod
    def _read_request(conn: socket.socket) -> bool:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return False
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return False
            body += chunk
        return True

    def _misbehave(self, conn: socket.socket) -> None:
        partial = (_ECHO % (self.requests, self.api_key)).encode()
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        if self.mode == "silent":
            self._stopped.wait()  # the connection stays open, unanswered, until stop()
            return
        if self.mode == "close":
            return  # an orderly close, no answer: "server disconnected"
        if self.mode == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return  # closing with linger 0 sends a TCP reset
        if self.mode == "truncated":
            conn.sendall(head % (len(partial) + 500) + partial)
            return
        if self.mode == "not_http":
            conn.sendall(b"SSH-2.0-OpenSSH_9.6 " + partial + b"\r\n")
            return
        if self.mode == "huge_header":
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Junk: " + b"a" * 200_000 + b"\r\n\r\n")
            return
        if self.mode == "trickle":
            # Each byte arrives well inside a per-read timeout; only a whole-call deadline ends it.
            conn.sendall(head % len(partial))
            for byte in partial:
                if self._stopped.wait(0.25):
                    return
                conn.sendall(bytes([byte]))
            return
        # stall: headers, then nothing until the broker gives up or the server stops
        conn.sendall(head % len(partial))
        self._stopped.wait(30)
