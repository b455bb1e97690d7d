"""Per-request context: request id, security headers and one log line per request."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

import structlog
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.capture.live.webhooks import WEBHOOKS_PATH
from app.observability.logs import bind_request_id, unbind_request_id
from app.observability.metrics import record_request

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{8,64}$")
HSTS_VALUE = "max-age=63072000; includeSubDomains"
# Sent on every response, as the OWASP REST cheat sheet asks: JSON only, never a page, so
# nothing may sniff it, load from it or frame it.
SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
    ("X-Frame-Options", "DENY"),
)

# The same, lower-cased and encoded once (as MutableHeaders.append would for every response).
_SECURITY_RAW = tuple(
    (n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in SECURITY_HEADERS
)
_NO_STORE_RAW = (b"cache-control", b"no-store")
_HSTS_RAW = (b"strict-transport-security", HSTS_VALUE.encode("latin-1"))

# Where the token endpoint leaves the audit fields of the token it issued (token_endpoint.py).
AUDIT_SCOPE_KEY = "videodb_token_broker.audit"

access_log = structlog.get_logger(logger_name="app.access")
audit_log = structlog.get_logger(logger_name="app.audit")


def _unset(headers: list[tuple[bytes, bytes]], name: bytes) -> bool:
    """Whether no header of this (lower-case) name is among these raw headers."""
    for key, _ in headers:  # noqa: SIM110 - all() over a generator costs about twice this
        if key == name:
            return False
    return True


def first_header(scope: Scope, name: bytes) -> str | None:
    """The first value of the header of this (lower-case) name, as Starlette's
    `request.headers.get` gives it, read from the scope's raw headers: no Headers object, no
    name lower-cased and encoded at every look-up (docs/performance.md)."""
    headers: Iterable[tuple[bytes, bytes]] = scope.get("headers", ())
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


def _incoming_request_id(scope: Scope) -> str | None:
    candidate = first_header(scope, b"x-request-id")
    if candidate is None or not _SAFE_REQUEST_ID.fullmatch(candidate):
        return None
    return candidate


class RequestContextMiddleware:
    """Binds a request id to every log line and adds the headers every response needs."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        quiet_paths: frozenset[str] = frozenset(),
        routes: Sequence[BaseRoute] = (),
    ) -> None:
        self.app = app
        self.quiet_paths = quiet_paths
        self.routes = routes  # the app's: a preflight CORS answered is counted under its route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or os.urandom(16).hex()
        token = bind_request_id(request_id)
        started = time.perf_counter()
        status = 500
        is_https = scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # A copy, as Starlette's MutableHeaders makes: the list may be a response's own.
                headers = message["headers"] = list(message.get("headers", ()))
                # Appended, not set: nothing inside sets these, and setting scans every header.
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                headers.extend(_SECURITY_RAW)
                if _unset(headers, b"cache-control"):
                    headers.append(_NO_STORE_RAW)
                if is_https:
                    headers.append(_HSTS_RAW)
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            elapsed = time.perf_counter() - started
            record_request(scope, status, elapsed, self.routes)
            if scope["path"] not in self.quiet_paths or status >= 400:
                _log_request(scope, status, elapsed)
            unbind_request_id(token)


def _loggable(path: str) -> str:
    """The path as logged: a webhook's last segment is derived from a secret, so any path
    under the webhooks' is logged by its template (a wrong guess is no one's business)."""
    if path.startswith(WEBHOOKS_PATH + "/"):
        return WEBHOOKS_PATH + "/{segment}"
    return path


def _log_request(scope: Scope, status: int, elapsed: float) -> None:
    """The access line; for an issued token, the audit line carrying the same fields."""
    fields: dict[str, Any] = {
        "method": scope["method"],
        "path": _loggable(scope["path"]),
        "status": status,
        "duration_ms": round(elapsed * 1000, 2),
    }
    audit = scope.get(AUDIT_SCOPE_KEY)
    if audit is None:
        access_log.info("request", client=(scope.get("client") or ("-",))[0], **fields)
    else:
        audit_log.info("token_issued", **audit, **fields)  # client_ip is among its fields
