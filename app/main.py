"""The application factory: settings in, a FastAPI app with its lifespan out."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, TypedDict

import structlog
from fastapi import FastAPI
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from app import __version__
from app.capture.wiring import start_capture
from app.config import Settings
from app.config.errors import settings_or_exit
from app.identity.wiring import start_identity
from app.infra.rate_limits import UserRateLimiter
from app.infra.wiring import limit_store, start_shared_state
from app.observability.logs import configure_logging
from app.services import Services
from app.tokens.wiring import build_tokens
from app.videodb.wiring import start_videodb
from app.web.capture_endpoints import router as capture_router
from app.web.cors import ProblemCORSMiddleware, cors_middleware_options
from app.web.live_endpoints import router as live_router
from app.web.ops_endpoints import MetricsPortMiddleware
from app.web.ops_endpoints import router as ops_router
from app.web.problems import UnhandledErrorMiddleware, install_error_handlers
from app.web.request_context import RequestContextMiddleware
from app.web.token_endpoint import add_token_route

if TYPE_CHECKING:
    from app.observability.otel import Tracing

log = structlog.get_logger(logger_name=__name__)


class State(TypedDict):
    """What the lifespan hands to every request (ASGI's lifespan state)."""

    services: Services


# Polled by orchestrators and Prometheus: no log line unless it failed, no trace.
OPERATIONS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


# The collector's young pass starts, by default, every 700 net new container objects. A
# worker with 32 token requests in flight holds about that many (their coroutines, requests,
# aiohttp's objects), so a pass came every dozen misses and moved the requests in flight to
# the older generations, whose passes walk every cached token and verified user: 55-85 µs of
# CPU a miss at 32 connections, 100-145 µs at 64, 7-18 % (docs/performance.md). 10,000 is
# more than a worker holds with 64 requests in flight. It delays only the freeing of
# reference cycles, which the token path hardly makes (one in thousands of requests); the
# rest is freed as before, when its last reference goes.
YOUNG_GENERATION_THRESHOLD = 10_000


def set_the_collector_for_serving() -> None:
    """Freeze what start-up built, once per process, and space the collector's young passes
    out to more than the requests in flight hold.

    Frozen objects are never collected or walked again: a full pass over a started broker
    (92,000 objects: FastAPI, pydantic, the libraries, the app) took 20 ms, a pause for every
    request in flight. Start-up's garbage is collected first, so that none of it is pinned.
    A process that starts many apps (the test suite, an embedding host) freezes only at the
    first: freezing at each pinned every earlier app's leftovers for good (in the suite,
    213,299 objects of earlier tests' loops, clients and sockets by the Redis tests).
    """
    if gc.get_freeze_count() == 0:
        gc.collect()
        gc.freeze()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, *gc.get_threshold()[1:])


def lifespan_for(
    settings: Settings, tracing: Tracing | None = None
) -> Callable[[FastAPI], AbstractAsyncContextManager[State]]:
    """The lifespan of an app with these settings: each area builds its long-lived services
    and registers their cleanup; requests get them as the lifespan state."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[State]:
        async with AsyncExitStack() as stack:
            if tracing is not None:  # first: the signing keys' first fetch is traced too
                tracing.start()
                # queued spans go out, bounded (otel.py); closed last
                stack.push_async_callback(tracing.stop)
            stack.callback(log.info, "broker_stopped")
            services = await _start_services(settings, stack)
            log.info(
                "broker_started",
                version=__version__,
                key_source=services.identity.describe(),
                upstream=settings.videodb_api,
            )
            set_the_collector_for_serving()
            yield {"services": services}

    return lifespan


async def _start_services(settings: Settings, stack: AsyncExitStack) -> Services:
    videodb, breaker = await start_videodb(settings, stack)
    shared = await start_shared_state(settings, stack)
    limits = limit_store(shared)
    tokens = build_tokens(settings, videodb, shared)
    identity = await start_identity(settings, stack)
    return Services(
        settings=settings,
        identity=identity.providers,
        breaker=breaker,
        shared_state=shared,
        authenticator=identity.authenticator,
        limiter=UserRateLimiter(settings.rate_limit, limits, "token", "token requests"),
        tokens=tokens,
        capture=await start_capture(settings, videodb, tokens, limits, shared, stack),
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the broker; settings are read here, never at import."""
    settings = settings or settings_or_exit()
    configure_logging(settings.log_level, settings.log_format)
    tracing = None
    if settings.otel_on:  # off: nothing of OpenTelemetry's SDK is imported (otel.py)
        from app.observability.otel import Tracing

        tracing = Tracing(settings.trusted_proxies)
    app = FastAPI(
        title="videodb-token-broker",
        version=__version__,
        summary="Short-lived VideoDB session tokens for authenticated end users.",
        lifespan=lifespan_for(settings, tracing),
        docs_url=None,
        redoc_url=None,
        # A path with a trailing slash is an unknown path (404), never a 307 to the other
        # spelling: Starlette builds that Location from the Host header the client sent.
        redirect_slashes=False,
        # The broker's telemetry is its JSON logs and Prometheus metrics, both scrubbed of
        # secrets. FastAPI's native OpenTelemetry would be a second export path, switched on
        # from the environment (FASTAPI_OTEL_AUTO_CONFIGURE, OTEL_*) and never vetted here.
        telemetry={"tracing": False, "metrics": False, "logs": False, "auto_configure": False},
    )
    install_error_handlers(app)
    add_token_route(app, settings)  # matched first: the busiest path
    app.include_router(ops_router)
    if settings.capture_sessions_on:  # off: 404 and absent from the OpenAPI document
        app.include_router(capture_router)
    if settings.capture_live_on:
        app.include_router(live_router)
    # Added innermost first: CORS sees requests after the request id is bound. Layers with
    # nothing to do are left out: each costs every request (docs/performance.md).
    app.add_middleware(UnhandledErrorMiddleware)
    if settings.metrics_port is not None:
        app.add_middleware(MetricsPortMiddleware, metrics_port=settings.metrics_port)
    if settings.cors_origins:
        app.add_middleware(ProblemCORSMiddleware, **cors_middleware_options(settings))  # type: ignore[arg-type]
    app.add_middleware(
        RequestContextMiddleware, quiet_paths=OPERATIONS_PATHS, routes=app.router.routes
    )
    if settings.trusted_proxies:
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=list(settings.trusted_proxies))
    if tracing is not None:  # outermost: it sees the real peer, before proxy headers
        from app.observability.otel import TracingMiddleware

        app.add_middleware(TracingMiddleware, tracing_=tracing, quiet_paths=OPERATIONS_PATHS)
    return app
