"""The application factory: settings in, a FastAPI app with its lifespan out."""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, TypedDict

import httpx
import structlog
from fastapi import FastAPI
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from app import __version__
from app.capture.service import CaptureSessions
from app.config import ConfigError, Settings, load_settings
from app.identity.authenticator import Authenticator
from app.identity.providers import IdentityProviders
from app.observability.logs import configure_logging
from app.rate_limit import UserRateLimiter
from app.services import Services
from app.shared_state import SharedState
from app.tokens.cache import LocalTokenCache
from app.tokens.sealing import TokenSealer
from app.tokens.service import TokenService
from app.tokens.shared_store import SharedTokenStore
from app.videodb.circuit_breaker import CircuitBreaker
from app.videodb.client import VideoDBClient, build_http_client
from app.videodb.retries import ResilientVideoDB
from app.web.capture_endpoints import router as capture_router
from app.web.cors import ProblemCORSMiddleware, cors_middleware_options
from app.web.ops_endpoints import router as ops_router
from app.web.problems import UnhandledErrorMiddleware, install_error_handlers
from app.web.request_context import RequestContextMiddleware
from app.web.token_endpoint import add_token_route

if TYPE_CHECKING:
    from app.observability.otel import Tracing

IDP_TIMEOUT = httpx.Timeout(5.0, connect=3.0)

log = structlog.get_logger(logger_name=__name__)


class State(TypedDict):
    """What the lifespan hands to every request (ASGI's lifespan state)."""

    services: Services


# Polled by orchestrators and Prometheus: no log line unless it failed, no trace.
OPERATIONS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def settings_or_exit() -> Settings:
    """Settings from the environment; on broken rules, one line each on stderr and exit 2."""
    try:
        return load_settings()
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"configuration error: {problem}", file=sys.stderr)
        raise SystemExit(2) from None


def freeze_start_up_objects() -> None:
    """Keep what start-up built out of the collector's full passes (a pause for every request
    in flight, docs/performance.md), once per process.

    Frozen objects are never collected. A server starts its app once, but a process that
    starts many apps (the test suite, an embedding host) would pin every earlier app's
    leftovers for good: in the suite, 213,299 objects of earlier tests (event loops,
    clients, sockets) were frozen by the time the Redis tests ran.
    """
    if gc.get_freeze_count() == 0:
        gc.freeze()


def lifespan_for(
    settings: Settings, tracing: Tracing | None = None
) -> Callable[[FastAPI], AbstractAsyncContextManager[State]]:
    """The lifespan of an app with these settings: it builds every long-lived service, hands
    them to requests as the lifespan state, and closes them on shutdown."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[State]:
        if tracing is not None:  # first: the signing keys' first fetch is traced too
            tracing.start()
        upstream_http = build_http_client(settings.upstream_timeout)
        idp_http = httpx.AsyncClient(timeout=IDP_TIMEOUT, follow_redirects=False)
        identity = IdentityProviders.from_configs(
            settings.identity_providers, idp_http, by_issuer=settings.auth_issuers is not None
        )
        videodb = VideoDBClient(
            upstream_http,
            settings.videodb_api_key,
            settings.videodb_api,
            settings.upstream_timeout,
            settings.capture_collection_id,
        )
        breaker = CircuitBreaker(settings.circuit_failure_threshold, settings.circuit_reset_seconds)
        redis_url = settings.redis_url.get_secret_value() if settings.redis_url else None
        shared = SharedState(redis_url) if redis_url else None
        store = (
            SharedTokenStore(shared, TokenSealer(settings.videodb_api_key.get_secret_value()))
            if shared is not None
            else None
        )
        resilient = ResilientVideoDB(videodb, breaker, settings.upstream_timeout)
        tokens = TokenService(
            resilient,
            LocalTokenCache(settings.cache_max_entries),
            store,
            upstream_name=settings.videodb_api,
            deadline=settings.upstream_timeout,
        )
        capture_on = settings.capture_sessions_on
        services = Services(
            settings=settings,
            identity=identity,
            breaker=breaker,
            shared_state=shared,
            authenticator=Authenticator(settings, identity),
            limiter=UserRateLimiter(settings.rate_limit, shared, redis_url),
            tokens=tokens,
            capture=(
                CaptureSessions(resilient, tokens, settings.capture_callback_url)
                if capture_on
                else None
            ),
            capture_limiter=(
                UserRateLimiter(
                    settings.capture_rate_limit,
                    shared,
                    redis_url,
                    key_prefix="capture",
                    noun="capture sessions",
                )
                if capture_on
                else None
            ),
            capture_read_limiter=(
                UserRateLimiter(
                    settings.capture_read_rate_limit,
                    shared,
                    redis_url,
                    key_prefix="capture_read",
                    noun="capture session reads",
                )
                if capture_on
                else None
            ),
        )
        await identity.start()
        if shared is not None and not await shared.ping():
            log.warning("redis_unreachable_at_start", fallback="in-process cache and limits")
        log.info(
            "broker_started",
            version=__version__,
            key_source=identity.describe(),
            upstream=settings.videodb_api,
        )
        freeze_start_up_objects()
        try:
            yield {"services": services}
        finally:
            if tracing is not None:
                # queued spans go out, bounded by OTEL_EXPORTER_OTLP_TIMEOUT; off the loop
                await asyncio.to_thread(tracing.stop)
            await identity.stop()
            if shared is not None:
                await shared.close()
            await upstream_http.aclose()
            await idp_http.aclose()
            log.info("broker_stopped")

    return lifespan


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
    add_token_route(app, settings)  # first: the busiest path is matched first
    app.include_router(ops_router)
    if settings.capture_sessions_on:  # off: 404 and absent from the OpenAPI document
        app.include_router(capture_router)
    # Added innermost first: CORS sees requests after the request id is bound. Layers with
    # nothing to do are left out: each costs every request (docs/performance.md).
    app.add_middleware(UnhandledErrorMiddleware)
    if settings.cors_origins:
        app.add_middleware(ProblemCORSMiddleware, **cors_middleware_options(settings))  # type: ignore[arg-type]
    app.add_middleware(RequestContextMiddleware, quiet_paths=OPERATIONS_PATHS)
    if settings.trusted_proxies:
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=list(settings.trusted_proxies))
    if tracing is not None:  # outermost: it sees the real peer, before proxy headers
        from app.observability.otel import TracingMiddleware

        app.add_middleware(TracingMiddleware, tracing_=tracing, quiet_paths=OPERATIONS_PATHS)
    return app
