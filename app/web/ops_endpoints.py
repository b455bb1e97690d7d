"""Health, readiness and metrics: what operators and orchestrators poll."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app import __version__
from app.observability import metrics
from app.services import services_of
from app.web.problems import problem_response

router = APIRouter(tags=["operations"])
METRICS_PATH = "/metrics"


@router.get("/healthz", summary="Liveness: 200 while the process serves")
async def healthz() -> dict[str, str]:
    """The process is up and answering."""
    return {"status": "ok", "version": __version__}


def readiness_checks(request: Request) -> dict[str, str]:
    """Each readiness check and its state: 'ok' or why not."""
    services = services_of(request)
    identity = services.identity
    checks = {"configuration": "ok"}
    if identity.ready:
        checks["signing_keys"] = "ok"
    elif len(identity) == 1:
        checks["signing_keys"] = next(iter(identity)).state
    else:
        checks["signing_keys"] = "not loaded for any identity provider"
    state = services.breaker.state
    checks["upstream_circuit"] = "ok" if state != "open" else "open (VideoDB failing)"
    shared = services.shared_state
    if shared is not None:
        # Informational: without Redis the broker still serves, per process.
        checks["redis"] = "ok" if shared.healthy else "degraded (serving from process memory)"
    return checks


_INFORMATIONAL = {"redis"}


def failing_checks(checks: dict[str, str]) -> list[str]:
    """The checks that make the process unready (Redis's is informational); sets the
    broker_ready gauge, so that a scrape tells a serving pod from one scraped but unready."""
    failing = sorted(
        name for name, state in checks.items() if state != "ok" and name not in _INFORMATIONAL
    )
    metrics.READY.set(0 if failing else 1)
    return failing


@router.get(
    "/readyz",
    summary="Readiness: 200 when tokens can be issued, else 503",
    responses={503: {"description": "not ready", "content": {"application/problem+json": {}}}},
)
async def readyz(request: Request) -> JSONResponse:
    """Ready when configuration is valid and one identity provider's signing keys are loaded."""
    checks = readiness_checks(request)
    # Each provider on its own: ready while one has keys, and the others' trouble is shown.
    providers = services_of(request).identity.states()
    failing = failing_checks(checks)
    if not failing:
        return JSONResponse({"status": "ready", "checks": checks, "identity_providers": providers})
    return problem_response(
        503,
        "not_ready",
        "Not ready",
        f"failing checks: {', '.join(failing)}",
        headers={"Retry-After": "5"},
        extra={"checks": checks, "identity_providers": providers},
    )


# HEAD too (RFC 9110 asks it of every GET resource): some load balancers' health checks and
# `curl -I` use it. Left out of the OpenAPI document, where it would repeat GET without a body.
for _path, _probe in (("/healthz", healthz), ("/readyz", readyz)):
    router.add_api_route(_path, _probe, methods=["HEAD"], include_in_schema=False)


@router.get(METRICS_PATH, summary="Prometheus metrics", include_in_schema=False)
async def metrics_endpoint(request: Request) -> Response:
    """Prometheus text format; probes Redis first and checks readiness, so that both gauges
    are current."""
    shared = services_of(request).shared_state
    if shared is not None and not shared.healthy:
        await shared.ping()
    failing_checks(readiness_checks(request))
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)


class MetricsPortMiddleware:
    """With BROKER_METRICS_PORT, /metrics answers on that port alone and nothing else does:
    a proxy that forwards the main port wholesale cannot publish it.

    The port is the one the connection reached (the ASGI scope's `server`), which no header
    can change."""

    def __init__(self, app: ASGIApp, *, metrics_port: int) -> None:
        self.app = app
        self.metrics_port = metrics_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            server = scope.get("server")
            on_metrics_port = server is not None and server[1] == self.metrics_port
            if on_metrics_port != (scope["path"] == METRICS_PATH):
                detail = (
                    "This port serves /metrics alone."
                    if on_metrics_port
                    else "No such endpoint. The token endpoint is POST /v1/capture/session/token."
                )
                await problem_response(404, "not_found", "Not Found", detail)(scope, receive, send)
                return
        await self.app(scope, receive, send)
