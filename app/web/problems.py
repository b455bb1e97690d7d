"""Every error as RFC 9457 problem+json, with our `code` and the request id: the handlers
FastAPI calls, and the layer that turns a bug into a 500 problem inside the request."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import BrokerError, InvalidRequest
from app.observability import tracing
from app.observability.logs import current_request_id

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "urn:videodb-token-broker:problem:"

# Answers that must never be kept by a browser or a proxy: they carry tokens.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_PROBLEM_CODES = {
    401: "missing_token / invalid_token",
    403: "insufficient_scope / csrf_failed / origin_not_allowed",
    404: "not_found",
    413: "payload_too_large",
    422: "invalid_request",
    429: "rate_limited",
    502: "upstream_error",
    503: "upstream_unavailable",
    504: "upstream_timeout",
}

log = structlog.get_logger(logger_name=__name__)


def documented_problems(*statuses: int, **notes: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these problem statuses, each with its codes (and a note, keyed
    `s404=...`), rendered as problem+json."""
    return {
        status: {
            "description": " ".join(
                filter(None, (_PROBLEM_CODES[status], notes.get(f"s{status}")))
            ),
            "content": {PROBLEM_CONTENT_TYPE: {}},
        }
        for status in statuses
    }


def problem_document(
    status: int, code: str, title: str, detail: str, request_id: str | None
) -> dict[str, Any]:
    """The RFC 9457 body every error carries, with our `code` and `request_id`."""
    return {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        "request_id": request_id,
    }


def problem_response(
    status: int,
    code: str,
    title: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> JSONResponse:
    """Render one problem+json response with the current request id."""
    tracing.annotate(**{"broker.problem.code": code})  # on the request's span
    body = problem_document(status, code, title, detail, current_request_id())
    body.update(extra or {})
    return JSONResponse(
        body, status_code=status, headers=dict(headers or {}), media_type=PROBLEM_CONTENT_TYPE
    )


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def problem_for(exc: BrokerError) -> JSONResponse:
    """The problem response a BrokerError stands for, with its headers."""
    return problem_response(exc.status, exc.code, exc.title, exc.detail, exc.headers)


async def _broker_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BrokerError)
    return problem_for(exc)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    phrase = HTTPStatus(exc.status_code).phrase
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    detail = {
        404: "No such endpoint. The token endpoint is POST /v1/capture/session/token.",
        405: "This method is not allowed on this path.",
    }.get(exc.status_code, phrase)
    return problem_response(exc.status_code, code, phrase, detail, exc.headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Name where the problem is, never echo the input back.
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
    detail = f"{where}: {first.get('msg', 'invalid')}"
    return problem_response(422, InvalidRequest.code, InvalidRequest.title, detail)


async def _unexpected_error(_: Request, exc: Exception) -> JSONResponse:
    # The exception text may hold anything; log only its type.
    log.error("unhandled_error", error_type=type(exc).__name__)
    return problem_response(
        500,
        "internal_error",
        "Internal error",
        "The broker failed unexpectedly; quote the request_id to support.",
    )


class UnhandledErrorMiddleware:
    """An unexpected exception becomes the 500 problem inside the request's own context.

    Starlette's ServerErrorMiddleware answers outside every middleware we add, so its 500
    carried no request id (in the body, the header or the log line) and no CORS headers.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception as exc:
            if started:
                raise  # too late for a problem body; the server closes the connection
            response = await _unexpected_error(Request(scope), exc)
            await response(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    """Route every error, FastAPI's own included, through problem+json."""
    app.add_exception_handler(BrokerError, _broker_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)
