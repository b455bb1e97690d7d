"""CORS for the configured origins only, with refusals rendered as problem+json."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response

from app.config import Settings
from app.errors import OriginNotAllowed
from app.web.problems import problem_response

# Last-Event-ID: a feed resumed over fetch (the clients' followCaptureSession) says where.
ALLOWED_HEADERS = ["Authorization", "Content-Type", "X-CSRF", "X-Request-ID", "Last-Event-ID"]
EXPOSED_HEADERS = ["Retry-After", "X-Request-ID", "WWW-Authenticate", "Location"]
PREFLIGHT_MAX_AGE = 600


class ProblemCORSMiddleware(CORSMiddleware):
    """Starlette's CORS, except that a refused preflight is a 403 problem, not plain text."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        if self.is_allowed_origin(request_headers.get("origin", "")):
            detail = "This method or header is not allowed from a browser."
        else:
            detail = "This origin is not allowed to call the broker."
        return problem_response(
            403,
            OriginNotAllowed.code,
            OriginNotAllowed.title,
            detail,
            headers={"Vary": "Origin"},
        )


def cors_middleware_options(settings: Settings) -> dict[str, object]:
    """Exact origins; GET (sessions, feeds) and POST; credentials only in the cookie mode."""
    return {
        "allow_origins": list(settings.cors_origins),
        "allow_methods": ["GET", "POST"],
        "allow_headers": ALLOWED_HEADERS,
        "expose_headers": EXPOSED_HEADERS,
        "allow_credentials": settings.auth_cookie_name is not None,
        "max_age": PREFLIGHT_MAX_AGE,
    }
