"""Where verification keys come from: a JWKS (direct or via OIDC discovery) or a shared secret."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from typing import Protocol

import httpx
import structlog

from app import metrics
from app.jwt_verification import KeyRing, build_key_ring, build_shared_secret_ring
from app.settings import Settings, require_secure_url

MAX_DOCUMENT_BYTES = 512 * 1024

log = structlog.get_logger(logger_name="app.signing_keys")


class KeyFetchError(Exception):
    """The identity provider could not give us usable keys this time."""


class SigningKeys(Protocol):
    """What the identity check needs from a key source."""

    @property
    def ready(self) -> bool: ...

    @property
    def ring(self) -> KeyRing: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def refresh_for_unknown_kid(self) -> None: ...

    def describe(self) -> str: ...


class SharedSecretKeys:
    """HS256 with one secret: always ready, nothing to fetch."""

    def __init__(self, secret: bytes) -> None:
        self._ring = build_shared_secret_ring(secret)

    @property
    def ready(self) -> bool:
        return True

    @property
    def ring(self) -> KeyRing:
        return self._ring

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def refresh_for_unknown_kid(self) -> None:
        return None

    def describe(self) -> str:
        return "shared HS256 secret"


async def _get_json(client: httpx.AsyncClient, url: str) -> object:
    try:
        async with client.stream("GET", url, headers={"Accept": "application/json"}) as resp:
            if resp.status_code != 200:
                raise KeyFetchError(f"HTTP {resp.status_code} from {url}")
            body = bytearray()
            async for chunk in resp.aiter_bytes():
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise KeyFetchError(f"document at {url} is larger than {MAX_DOCUMENT_BYTES}")
    except httpx.HTTPError as exc:
        raise KeyFetchError(f"{type(exc).__name__} fetching {url}") from exc
    try:
        return json.loads(body)
    except ValueError:
        raise KeyFetchError(f"document at {url} is not JSON") from None


class JwksKeys:
    """Keys from a JWKS URL, refreshed on a schedule; an unknown kid refetches at most once
    per cool-down, and keys already held keep working while the provider is down."""

    def __init__(
        self,
        settings: Settings,
        client: httpx.AsyncClient,
        *,
        refresh_interval: float = 300.0,
        unknown_kid_cooldown: float = 30.0,
        max_retry_delay: float = 30.0,
    ) -> None:
        self._configured_jwks_url = settings.auth_jwks_url
        self._issuer = settings.auth_issuer
        self._allowed = frozenset(settings.auth_algorithms)
        self._client = client
        self._refresh_interval = refresh_interval
        self._cooldown = unknown_kid_cooldown
        self._max_retry_delay = max_retry_delay
        self._ring: KeyRing = {}
        self._jwks_url: str | None = self._configured_jwks_url
        self._last_unknown_kid_fetch = float("-inf")
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.last_error: str | None = None

    @property
    def ready(self) -> bool:
        return bool(self._ring)

    @property
    def ring(self) -> KeyRing:
        return self._ring

    def describe(self) -> str:
        return f"JWKS at {self._jwks_url or 'discovery of ' + str(self._issuer)}"

    async def start(self) -> None:
        """Begin loading keys in the background; readiness follows the first success."""
        self._task = asyncio.create_task(self._keep_fresh(), name="jwks-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def load_once(self) -> None:
        """Fetch the keys now; raise KeyFetchError when that fails."""
        async with self._lock:
            await self._fetch("check")

    async def refresh_for_unknown_kid(self) -> None:
        """Refetch because a token named a kid we do not hold, at most once per cool-down."""
        if time.monotonic() - self._last_unknown_kid_fetch < self._cooldown:
            return
        async with self._lock:
            if time.monotonic() - self._last_unknown_kid_fetch < self._cooldown:
                return  # someone else refreshed while we waited for the lock
            self._last_unknown_kid_fetch = time.monotonic()
            try:
                await self._fetch("unknown_kid")
            except KeyFetchError as exc:
                log.warning("jwks_refresh_failed", trigger="unknown_kid", error=str(exc))

    async def _keep_fresh(self) -> None:
        delay = 0.5
        while True:
            try:
                async with self._lock:
                    await self._fetch("schedule")
            except KeyFetchError as exc:
                log.warning(
                    "jwks_refresh_failed",
                    trigger="schedule",
                    error=str(exc),
                    keys_held=bool(self._ring),
                )
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # noqa: S311 - jitter
                delay = min(delay * 2, self._max_retry_delay)
                continue
            delay = 0.5
            await asyncio.sleep(self._refresh_interval)

    async def _discover(self) -> str:
        assert self._issuer is not None
        url = self._issuer.rstrip("/") + "/.well-known/openid-configuration"
        doc = await _get_json(self._client, url)
        if not isinstance(doc, dict) or not isinstance(doc.get("jwks_uri"), str):
            raise KeyFetchError("discovery document has no jwks_uri")
        if doc.get("issuer") != self._issuer:
            raise KeyFetchError("discovery document names a different issuer")
        try:
            return require_secure_url(doc["jwks_uri"])
        except ValueError as exc:
            raise KeyFetchError(f"discovery jwks_uri refused: {exc}") from None

    async def _fetch(self, trigger: str) -> None:
        try:
            await self._fetch_and_build()
        except KeyFetchError:
            metrics.KEY_REFRESHES.labels(trigger, "failed").inc()
            raise
        metrics.KEY_REFRESHES.labels(trigger, "ok").inc()

    async def _fetch_and_build(self) -> None:
        try:
            url = self._jwks_url or await self._discover()
            document = await _get_json(self._client, url)
            try:
                ring, skipped = build_key_ring(document, self._allowed)
            except ValueError as exc:
                raise KeyFetchError(str(exc)) from None
            if not ring:
                raise KeyFetchError("JWKS holds no key usable with BROKER_AUTH_ALGORITHMS")
        except KeyFetchError as exc:
            self.last_error = str(exc)
            raise
        if self._configured_jwks_url is None:
            self._jwks_url = url
        changed = set(ring) != set(self._ring)
        self._ring = ring
        self.last_error = None
        if changed:
            log.info("jwks_loaded", keys=len(ring), skipped=skipped, kids=sorted(map(str, ring)))


def signing_keys_for(settings: Settings, client: httpx.AsyncClient) -> SigningKeys:
    """The key source the settings ask for."""
    if settings.auth_hs256_secret is not None:
        return SharedSecretKeys(settings.auth_hs256_secret.get_secret_value().encode())
    return JwksKeys(settings, client)
