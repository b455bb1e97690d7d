"""`token-broker check --live`: what a valid configuration cannot prove, tried for real.

A copied `.env`, a revoked key, a Redis that is down or refuses a command, an identity
provider whose keys do not load: each would otherwise reach users as 502s, 401s or a slow
fallback. Each probe is one line, `ok` or `FAIL`, and none prints a secret.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable

import httpx
from redis.exceptions import RedisError

from app.config import Settings
from app.config.providers import ProviderConfig
from app.config.redis import RedisTarget
from app.errors import BrokerError
from app.identity.signing_keys import JwksKeys, KeyFetchError, signing_keys_for
from app.identity.wiring import identity_provider_client
from app.infra.redis_clients import close, connect
from app.tokens.shared_store import KEY_PREFIX
from app.videodb.client import VideoDBClient, build_http_client

# The VideoDB user id of the probe's one token: fixed, so that VideoDB's logs show it for what
# it is, and no end user's id (user ids made by the broker carry a provider's prefix or a
# claim value; an operator who could clash with this one can choose another prefix).
PROBE_USER_ID = "token-broker-check"
PROBE_TIMEOUT_S = 5.0
MAX_DETAIL_CHARS = 160

CheckResult = tuple[bool, str]


async def live_checks(settings: Settings, live: bool) -> list[CheckResult]:
    """Every identity provider's keys (as the contract's `check` loads them) and, with
    `live`, VideoDB and Redis (when configured) too, at once."""
    probes = []
    if live:
        probes.append(_videodb(settings))
        if settings.redis_target is not None:
            probes.append(_redis(settings.redis_target))
    async with identity_provider_client() as client:  # as the broker fetches keys
        probes += [_signing_keys(client, provider) for provider in settings.identity_providers]
        return list(await asyncio.gather(*probes))


async def _videodb(settings: Settings) -> CheckResult:
    """One token of the shortest lifetime the broker asks for, for the probe's user id."""
    timeout = min(settings.upstream_timeout, PROBE_TIMEOUT_S)
    async with build_http_client(timeout) as http:
        client = VideoDBClient(http, settings.videodb_api_key, settings.videodb_api, timeout)
        try:
            await client.mint(PROBE_USER_ID, settings.token_min_ttl)
        except BrokerError as exc:
            return False, f"videodb: {exc.detail}"
    return True, (
        f"videodb: the key is accepted (one {settings.token_min_ttl} s token for user "
        f"'{PROBE_USER_ID}')"
    )


async def _redis(target: RedisTarget) -> CheckResult:
    """The commands the broker sends: PING, SET with NX and PX (the mint lock), GET, EXISTS,
    PTTL and PEXPIRE (a planted marker is cut to its lifetime), EVAL (the lock's release, the
    rate limits and the markers' cap are scripts) and DEL, on a key of its own."""
    client = connect(target, PROBE_TIMEOUT_S)  # a Cluster's or Sentinel's too
    key = f"{KEY_PREFIX}:check:{secrets.token_hex(8)}"
    steps: dict[str, Callable[[], Awaitable[object]]] = {
        "PING": client.ping,
        "SET": lambda: client.set(key, b"1", nx=True, px=10_000),
        "GET": lambda: client.get(key),
        "EXISTS": lambda: client.exists(key),
        "PTTL": lambda: client.pttl(key),
        "PEXPIRE": lambda: client.pexpire(key, 10_000),
        "EVAL": lambda: client.eval("return 1", 0),
        "DEL": lambda: client.delete(key),
    }
    try:
        for command, step in steps.items():
            try:
                await step()
            except (RedisError, OSError) as exc:
                # redis-py's messages name the host and port and Redis's refusal, never the
                # password of the URL
                detail = str(exc).splitlines()[0][:MAX_DETAIL_CHARS] if str(exc) else ""
                return False, f"redis: {command} failed: {type(exc).__name__} {detail}".rstrip()
    finally:
        await close(client)
    return True, f"redis: answers {', '.join(steps)}"


async def _signing_keys(client: httpx.AsyncClient, provider: ProviderConfig) -> CheckResult:
    """This provider's keys, loaded once as the broker loads them."""
    keys = signing_keys_for(provider, client)
    where = f"signing_keys [{provider.label}]"
    if isinstance(keys, JwksKeys):
        try:
            await keys.load_once()
        except KeyFetchError as exc:
            return False, f"{where}: {exc}"
    count = sum(len(algs) for algs in keys.ring.values())
    return True, f"{where}: {count} key(s) from {keys.describe()}"
