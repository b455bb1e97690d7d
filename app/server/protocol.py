"""uvicorn's httptools protocol with the two limits it lacks, refusing in problem+json.

uvicorn bounds neither how long a client may take to send its request nor how large the
request head may be: alone, uvicorn 0.54 holds open for good a connection that sends nothing,
or its headers a byte at a time, and reads a header line of megabytes into memory. Behind a
proxy that enforces its own limits this never matters; a broker that terminates TLS itself
(`BROKER_TLS_CERT_FILE`) faces clients directly. This subclass:

- gives each request, pipelined or not, REQUEST_READ_TIMEOUT_S from its first byte until it
  has arrived whole, head and body: then 408 if the head is not complete, else the
  connection is closed (the app already holds the request and sees the client go);
- treats a new connection that sends nothing like an idle kept-alive one: uvicorn's
  keep-alive timeout (`token-broker serve --keep-alive`) closes it quietly;
- refuses a head larger than MAX_HEAD_BYTES with 431 before it is parsed further, for every
  request on the connection (see the class for how a head is measured);
- answers bytes that are not HTTP with a problem body too (uvicorn's is plain text);
- writes what a step of the event loop has for the connection in one call, so that a
  response's head and body leave together (step_writes.py; uvicorn writes them apart).

Waiting for a response is not limited here: that is the app's business (its deadlines).
"""

from __future__ import annotations

import asyncio
import os
from http import HTTPStatus
from typing import Any

import orjson
import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.observability import metrics
from app.server.step_writes import StepWriter
from app.web.problems import PROBLEM_CONTENT_TYPE, problem_document
from app.web.request_context import SECURITY_HEADERS

REQUEST_READ_TIMEOUT_S = 10.0
MAX_HEAD_BYTES = 32 * 1024
# Idle seconds before a connection is closed. Above the idle timeouts of the usual proxies in
# front (AWS ALB and ingress-nginx: 60 s), so that the proxy, not the broker, ends an idle
# connection: the other way round, a request the proxy sends as the broker closes is a 502.
KEEP_ALIVE_S = 75

log = structlog.get_logger(logger_name="app.access")


def refusal(status: HTTPStatus, code: str, detail: str, request_id: str) -> bytes:
    """A whole HTTP/1.1 response carrying a problem body, then `Connection: close`."""
    body = orjson.dumps(problem_document(status.value, code, status.phrase, detail, request_id))
    headers = [
        ("Content-Type", PROBLEM_CONTENT_TYPE),
        ("Content-Length", str(len(body))),
        ("X-Request-ID", request_id),
        ("Cache-Control", "no-store"),
        *SECURITY_HEADERS,
        ("Connection", "close"),
    ]
    head = f"HTTP/1.1 {status.value} {status.phrase}\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in headers
    )
    return (head + "\r\n").encode("latin-1") + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """Every request on a connection, pipelined or not, must arrive in time and with a
    bounded head.

    A head is measured two ways, and refused when either passes MAX_HEAD_BYTES: as parsed
    (its request target and header lines, counted as the parser hands them over, which sees a
    head that shares a read with the end of the previous request), and as received (every
    read while the head is incomplete, so that a head the parser is still gathering never
    grows past the limit in memory). A head that begins inside a read and is still
    incomplete at its end has that whole read counted: the share that was the previous
    request's is not known, and the error falls on the side of refusing.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading_head = True
        self._head_bytes = 0  # as received
        self._parsed_head = 0  # as parsed
        self._read_size = 0  # the read being parsed, 0 between reads
        self._completed_in_read = False  # a request ended inside the read being parsed
        self._began_in_read = False  # and the next one began after it in the same read
        self._refused = False
        self._started: float | None = None  # the first byte of the request under way
        self._read_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # A response's head and body in one write (step_writes.py); uvicorn's flow control
        # keeps the transport itself.
        self.transport = StepWriter(transport, self.loop)  # type: ignore[assignment]
        # A new connection that sends nothing is idle like a kept-alive one: uvicorn's own
        # keep-alive timer closes it quietly (it is cancelled by the first byte that comes).
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._reading_head:
            self._arm()  # the request's clock starts with its first byte, even a blank line
            if not self._count_received(len(data)):
                return
        self._read_size, self._completed_in_read, self._began_in_read = len(data), False, False
        try:
            super().data_received(data)
        finally:
            self._read_size = 0
        if self._began_in_read and self._reading_head and not self._refused:
            self._count_received(len(data))
        if self._started is not None and self._read_deadline is None and not self._refused:
            # A request still arriving after this read: its deadline, from its first byte. One
            # that arrived whole in the read (nearly all) never needs a timer.
            self._read_deadline = self.loop.call_at(
                self._started + REQUEST_READ_TIMEOUT_S, self._too_slow
            )

    def on_message_begin(self) -> None:
        if self._refused:
            return
        if self._completed_in_read:  # pipelined: this head shares a read with the last body
            self._began_in_read = True
        self._arm()
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        if self._count_parsed(len(url)):
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._count_parsed(len(name) + len(value) + 4):  # ": " and CRLF
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._reading_head = False
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        super().on_message_complete()
        self._disarm()
        self._reading_head, self._head_bytes, self._parsed_head = True, 0, 0
        self._completed_in_read = self._read_size > 0

    def _count_received(self, size: int) -> bool:
        self._head_bytes += size
        return self._within_head_limit()

    def _count_parsed(self, size: int) -> bool:
        if self._refused:
            return False
        self._parsed_head += size
        return self._within_head_limit()

    def _within_head_limit(self) -> bool:
        if max(self._head_bytes, self._parsed_head) <= MAX_HEAD_BYTES:
            return True
        self._refuse(
            HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request_header_too_large",
            f"The request line and headers may hold at most {MAX_HEAD_BYTES} bytes.",
        )
        return False

    def _arm(self) -> None:
        """The request's clock starts (its timer is set once a read ends with it unfinished)."""
        if self._started is None:
            self._started = self.loop.time()

    def _disarm(self) -> None:
        self._started = None
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _too_slow(self) -> None:
        self._read_deadline = None
        self._started = None
        if self.transport.is_closing():
            return
        answering = self.cycle is not None and not self.cycle.response_complete
        if self._reading_head and not answering:
            self._refuse(
                HTTPStatus.REQUEST_TIMEOUT,
                "request_timeout",
                f"The request did not arrive within {REQUEST_READ_TIMEOUT_S:g} seconds.",
            )
            return
        # A body that is late while the app already holds the request: it sees the client go.
        log.warning("request_refused", reason="request_too_slow", client=self._peer())
        metrics.CONNECTIONS_REFUSED.labels("request_too_slow").inc()
        self.transport.close()

    def _unsupported_upgrade_warning(self) -> None:
        """An `Upgrade: websocket` request is served as plain HTTP (the broker runs with
        ws="none"): uvicorn's two warnings per such request, one of them advising to install
        a WebSocket library, would only mislead whoever reads the logs."""

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes that are not HTTP/1.1, as a problem like every error."""
        if self._refused:
            return
        self._refuse(HTTPStatus.BAD_REQUEST, "bad_request", "The request is not valid HTTP/1.1.")

    def _refuse(self, status: HTTPStatus, code: str, detail: str) -> None:
        # Once refused, the rest of what the parser holds is ignored: the connection closes.
        self._refused = True
        request_id = os.urandom(16).hex()  # in the body and the log line, to match them up
        log.warning(
            "request_refused",
            reason=code,
            status=status.value,
            client=self._peer(),
            request_id=request_id,
        )
        metrics.CONNECTIONS_REFUSED.labels(code).inc()
        self._disarm()
        self.transport.write(refusal(status, code, detail, request_id))
        self.transport.close()

    def _peer(self) -> str:
        return self.client[0] if self.client else "-"


# How every broker server runs, `token-broker serve` and the demo alike.
SERVER_OPTIONS: dict[str, Any] = {
    "http": GuardedHttpToolsProtocol,  # uvicorn's httptools with the limits above
    "ws": "none",  # no WebSocket endpoints: an upgrade request is served as plain HTTP
    "proxy_headers": False,  # the app applies BROKER_TRUSTED_PROXIES itself
    "server_header": False,
    "timeout_keep_alive": KEEP_ALIVE_S,
}
