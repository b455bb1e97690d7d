"""redis-py's own client for each shape of Redis an operator runs (config/redis.py): one node,
the primary Sentinel names, or a Cluster. Each fails fast (no hidden retries, short socket
timeouts) because SharedState decides what a failure means; TLS is verified, against the CA
file when one is named."""

from __future__ import annotations

from typing import Any

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff

from app.config.redis import RedisTarget

# How many connections one process may hold to each node (SharedState queues callers first).
MAX_CONNECTIONS = 64

RedisClient = redis.Redis | RedisCluster


def _failing_fast(socket_timeout: float, retries: int = 0) -> dict[str, Any]:
    return {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        "health_check_interval": 0,
        "retry": Retry(NoBackoff(), retries),  # a failure opens an incident, not a retry loop
    }


def _tls(target: RedisTarget) -> dict[str, Any]:
    return {"ssl_ca_certs": target.ca_file} if target.ca_file else {}


def connect(target: RedisTarget, socket_timeout: float) -> RedisClient:
    """A client for the target; it connects on its first command, not here."""
    url = target.url.get_secret_value()
    if target.shape == "cluster":
        return RedisCluster.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            # a node that failed: refresh the slot map and try once more (a failover already
            # done is followed at once), then fail. MOVED and ASK are followed apart.
            **_failing_fast(socket_timeout, retries=1),
            **_tls(target),
        )
    if target.shape == "sentinel":
        return _sentinel_primary(target, socket_timeout)
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=None,  # SharedState queues callers first, so none waits here
        **_failing_fast(socket_timeout),
        **_tls(target),
    )
    return redis.Redis(connection_pool=pool)


async def close(client: RedisClient) -> None:
    """Close the client and every connection it holds."""
    if isinstance(client, RedisCluster):
        await client.aclose()
        return
    pool = client.connection_pool
    await client.aclose(close_connection_pool=True)
    if isinstance(pool, SentinelConnectionPool):  # and its connections to the Sentinels
        for sentinel in pool.sentinel_manager.sentinels:
            await sentinel.aclose()


def _sentinel_primary(target: RedisTarget, socket_timeout: float) -> redis.Redis:
    """The primary of the service the URL's host names, found again by asking the Sentinels
    on each new connection (after a failover, the next connection reaches the new primary)."""
    options = parse_url(target.url.get_secret_value())
    service = options.pop("host")
    tls = options.pop("connection_class", None) is SSLConnection
    common = {**_failing_fast(socket_timeout), **(_tls(target) if tls else {})}
    sentinel_auth = (
        {"password": target.sentinel_password.get_secret_value()}
        if target.sentinel_password
        else {}
    )
    primary_options: dict[str, Any] = {**common, **options, **({"ssl": True} if tls else {})}
    sentinel = Sentinel(
        list(target.sentinels),
        sentinel_kwargs={**common, "ssl": tls, **sentinel_auth},
        **primary_options,
    )
    primary: redis.Redis = sentinel.master_for(service)
    return primary
