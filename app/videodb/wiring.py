"""VideoDB's part of start-up: one kept client for every call that carries the key, behind
the retries and the circuit breaker."""

from __future__ import annotations

from contextlib import AsyncExitStack

from app.config import Settings
from app.videodb.circuit_breaker import CircuitBreaker
from app.videodb.client import VideoDBClient, build_http_client
from app.videodb.retries import ResilientVideoDB


async def start_videodb(
    settings: Settings, stack: AsyncExitStack
) -> tuple[ResilientVideoDB, CircuitBreaker]:
    """The resilient client and its breaker (which readiness reads); closed with the stack."""
    connections = settings.upstream_max_connections
    http = await stack.enter_async_context(
        build_http_client(settings.upstream_timeout, connections)
    )
    client = VideoDBClient(
        http,
        settings.videodb_api_key,
        settings.videodb_api,
        settings.upstream_timeout,
        settings.capture_collection_id,
        connections,
    )
    breaker = CircuitBreaker(settings.circuit_failure_threshold, settings.circuit_reset_seconds)
    return ResilientVideoDB(client, breaker, settings.upstream_timeout), breaker
