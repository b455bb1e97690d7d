"""Where the shared Redis is, and in which shape: one node (BROKER_REDIS_URL), a primary that
Sentinel names (BROKER_REDIS_SENTINELS, the URL's host being the service name, as django-redis
reads it), or a Cluster (BROKER_REDIS_CLUSTER=on, the URL naming any node); TLS verified
against BROKER_REDIS_CA_FILE when the URL is rediss://. The rules here never repeat the URL,
which may hold a password."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from pydantic import SecretStr

REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})
MAX_SENTINELS = 16

Shape = Literal["node", "sentinel", "cluster"]


@dataclass(frozen=True)
class RedisTarget:
    """What the Redis client is built from (app/infra/redis_clients.py)."""

    url: SecretStr
    ca_file: str | None = None
    cluster: bool = False
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_password: SecretStr | None = None

    @property
    def shape(self) -> Shape:
        if self.cluster:
            return "cluster"
        return "sentinel" if self.sentinels else "node"

    @property
    def tls(self) -> bool:
        return self.url.get_secret_value().startswith("rediss://")


def redis_url(value: SecretStr | None) -> SecretStr | None:
    """A URL the Redis client takes: checked here so that a bad one is one line at start-up,
    not a traceback."""
    if value is None:
        return None
    try:
        parts = urlsplit(value.get_secret_value())
        port = parts.port
    except ValueError:
        raise ValueError("is not a valid URL (check the host and port)") from None
    if parts.scheme not in REDIS_SCHEMES:
        raise ValueError("must start with redis://, rediss:// or unix://")
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError("must name a host, as in redis://redis:6379/0")
    if parts.scheme == "unix" and not parts.path:
        raise ValueError("must name a socket path, as in unix:///run/redis.sock")
    if port == 0:
        raise ValueError("port must be from 1 to 65535")
    from redis.asyncio.connection import parse_url

    try:
        parse_url(value.get_secret_value())
    except (ValueError, TypeError):
        raise ValueError("has an option the Redis client refuses (check its query)") from None
    return value


def sentinel_addresses(value: list[str]) -> list[str]:
    """host:port of each Sentinel, as in sentinel-0:26379,sentinel-1:26379."""
    if len(value) > MAX_SENTINELS:
        raise ValueError(f"names more than {MAX_SENTINELS} Sentinels")
    for entry in value:
        _host_port(entry)
    return value


def _host_port(entry: str) -> tuple[str, int]:
    host, colon, port = entry.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # [::1]:26379
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("each entry must be host:port, as in sentinel-0:26379")
    return host, int(port)


def redis_target(
    url: SecretStr | None,
    ca_file: str | None,
    cluster: bool,
    sentinels: list[str],
    sentinel_password: SecretStr | None,
) -> RedisTarget | None:
    """The shape these settings describe, or ValueError naming the variables that disagree."""
    if url is None:
        others = [
            name
            for name, value in (
                ("BROKER_REDIS_CA_FILE", ca_file),
                ("BROKER_REDIS_CLUSTER", cluster),
                ("BROKER_REDIS_SENTINELS", sentinels),
                ("BROKER_REDIS_SENTINEL_PASSWORD", sentinel_password),
            )
            if value
        ]
        if others:
            verb = "needs" if len(others) == 1 else "need"
            raise ValueError(f"{', '.join(others)} {verb} BROKER_REDIS_URL")
        return None
    parts = urlsplit(url.get_secret_value())
    if ca_file is not None:
        if parts.scheme != "rediss":
            raise ValueError("BROKER_REDIS_CA_FILE needs a rediss:// BROKER_REDIS_URL (TLS)")
        if not os.path.isfile(ca_file) or not os.access(ca_file, os.R_OK):
            raise ValueError("BROKER_REDIS_CA_FILE is not a readable file")
    if cluster and sentinels:
        raise ValueError("BROKER_REDIS_CLUSTER and BROKER_REDIS_SENTINELS are two shapes: set one")
    if sentinel_password is not None and not sentinels:
        raise ValueError("BROKER_REDIS_SENTINEL_PASSWORD needs BROKER_REDIS_SENTINELS")
    if (cluster or sentinels) and parts.scheme == "unix":
        raise ValueError("a Cluster or Sentinel's BROKER_REDIS_URL is redis:// or rediss://")
    if cluster and parts.path not in ("", "/", "/0"):
        raise ValueError("a Redis Cluster has database 0 only: BROKER_REDIS_URL ends in /0")
    if sentinels and parts.port is not None:
        raise ValueError(
            "with BROKER_REDIS_SENTINELS, BROKER_REDIS_URL's host is the Sentinel service name "
            "and names no port, as in redis://:password@mymaster/0"
        )
    return RedisTarget(
        url=url,
        ca_file=ca_file,
        cluster=cluster,
        sentinels=tuple(_host_port(entry) for entry in sentinels),
        sentinel_password=sentinel_password,
    )
