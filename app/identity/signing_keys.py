"""Where verification keys come from: a JWKS (direct or via OIDC discovery) or a shared secret."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import time
from collections.abc import Callable
from typing import Protocol

import httpx
import structlog

from app.config.providers import ProviderConfig
from app.identity.jwt import KeyRing, build_key_ring, build_shared_secret_ring
from app.observability import metrics, tracing
from app.urls import require_secure_url

MAX_DOCUMENT_BYTES = 512 * 1024
# One fetch of a discovery document or JWKS, whole: a provider trickling bytes in under every
# per-read timeout still ends here.
FETCH_DEADLINE_S = 5.0
# How long a request whose token names an unknown kid waits for the refetch it triggered.
# Past it the request is refused (fail closed) and the refetch goes on in the background.
UNKNOWN_KID_WAIT_S = 2.0
FIRST_RETRY_DELAY_S = 0.5

log = structlog.get_logger(logger_name=__name__)


class KeyFetchError(Exception):
    """The identity provider could not give us usable keys this time."""


class SigningKeys(Protocol):
    """What the identity check needs from a key source."""

    @property
    def ready(self) -> bool: ...

    @property
    def ring(self) -> KeyRing: ...

    @property
    def generation(self) -> int:
        """Changes whenever the ring does, and never repeats: what verified tokens are tied to."""
        ...

    @property
    def last_error(self) -> str | None:
        """Why the last fetch failed, while it has not succeeded since; else None."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def refresh_for_unknown_kid(self) -> None: ...

    def describe(self) -> str: ...


class SharedSecretKeys:
    """HS256 with one secret, or two while it rotates: always ready, nothing to fetch."""

    def __init__(self, *secrets: bytes, provider: str = "shared-secret") -> None:
        self._ring = build_shared_secret_ring(*secrets)
        self._count = len(secrets)
        self._provider = provider

    @property
    def ready(self) -> bool:
        return True

    @property
    def ring(self) -> KeyRing:
        return self._ring

    @property
    def generation(self) -> int:
        return 0

    @property
    def last_error(self) -> str | None:
        return None

    async def start(self) -> None:
        # the secret is the key: loaded at start
        metrics.KEYS_LOADED_AT.labels(self._provider).set(time.time())

    async def stop(self) -> None:
        return None

    async def refresh_for_unknown_kid(self) -> None:
        return None

    def describe(self) -> str:
        if self._count == 1:
            return "shared HS256 secret"
        return f"{self._count} shared HS256 secrets (the current and the next)"


async def _get_json(client: httpx.AsyncClient, url: str, deadline: float) -> object:
    try:
        async with (
            asyncio.timeout(deadline),
            client.stream("GET", url, headers={"Accept": "application/json"}) as resp,
        ):
            if resp.status_code != 200:
                raise KeyFetchError(f"HTTP {resp.status_code} from {url}")
            body = bytearray()
            async for chunk in resp.aiter_bytes():
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise KeyFetchError(f"document at {url} is larger than {MAX_DOCUMENT_BYTES}")
    except TimeoutError:
        raise KeyFetchError(f"no complete answer from {url} within {deadline:g} s") from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise KeyFetchError(f"{type(exc).__name__} fetching {url}") from exc
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise KeyFetchError(f"document at {url} is not JSON (or nested too deeply)") from None


class JwksKeys:
    """Keys from a JWKS URL, refreshed on a schedule; an unknown kid refetches at most once
    per cool-down, and keys already held keep working while the provider is down."""

    def __init__(
        self,
        provider: ProviderConfig,
        client: httpx.AsyncClient,
        *,
        refresh_interval: float = 300.0,
        unknown_kid_cooldown: float = 30.0,
        max_retry_delay: float = 30.0,
        fetch_deadline: float = FETCH_DEADLINE_S,
        unknown_kid_wait: float = UNKNOWN_KID_WAIT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._configured_jwks_url = provider.jwks_url
        self._issuer = provider.issuer
        self._provider = provider.label
        self._allowed = frozenset(provider.algorithms)
        self._client = client
        self._refresh_interval = refresh_interval
        self._cooldown = unknown_kid_cooldown
        self._max_retry_delay = max_retry_delay
        self._fetch_deadline = fetch_deadline
        self._unknown_kid_wait = unknown_kid_wait
        self._clock = clock
        self._unknown_kid_fetch: asyncio.Task[None] | None = None
        self._ring: KeyRing = {}
        self._generation = 0
        self._document_digest: bytes | None = None
        self._jwks_url: str | None = self._configured_jwks_url
        self._last_unknown_kid_fetch = float("-inf")
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._last_error: str | None = None

    @property
    def ready(self) -> bool:
        return bool(self._ring)

    @property
    def ring(self) -> KeyRing:
        return self._ring

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def last_error(self) -> str | None:
        return self._last_error

    def describe(self) -> str:
        return f"JWKS at {self._jwks_url or 'discovery of ' + str(self._issuer)}"

    async def start(self) -> None:
        """Begin loading keys in the background; readiness follows the first success."""
        self._task = asyncio.create_task(self._keep_fresh(), name=f"jwks-refresh-{self._provider}")

    async def stop(self) -> None:
        for task in (self._task, self._unknown_kid_fetch):
            if task is not None:
                task.cancel()
                # Nothing a fetch did may fail the shutdown (each failure was logged as it came).
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def load_once(self) -> None:
        """Fetch the keys now; raise KeyFetchError when that fails."""
        async with self._lock:
            await self._fetch("check")

    async def refresh_for_unknown_kid(self) -> None:
        """Refetch because a token named a kid we do not hold, at most once per cool-down.

        Every request that needs the refetch shares the one under way, and waits for it at
        most `unknown_kid_wait`: a slow provider delays those requests by that much, never
        more, and the refetch finishes in the background for the requests after them.
        """
        fetch = self._unknown_kid_fetch
        if fetch is None or fetch.done():
            if self._clock() - self._last_unknown_kid_fetch < self._cooldown:
                return
            self._last_unknown_kid_fetch = self._clock()
            fetch = asyncio.create_task(self._refetch_for_unknown_kid(), name="jwks-unknown-kid")
            self._unknown_kid_fetch = fetch
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(fetch), self._unknown_kid_wait)

    async def _refetch_for_unknown_kid(self) -> None:
        async with self._lock:
            try:
                await self._fetch("unknown_kid")
            except KeyFetchError as exc:
                log.warning(
                    "jwks_refresh_failed",
                    provider=self._provider,
                    trigger="unknown_kid",
                    error=str(exc),
                )

    async def _keep_fresh(self) -> None:
        """Fetch on schedule for as long as the broker runs; a failure, whatever its cause,
        is logged and retried after a growing delay (0.5 s first, capped at the interval)."""
        cap = min(self._max_retry_delay, self._refresh_interval)
        delay = FIRST_RETRY_DELAY_S
        while True:
            try:
                async with self._lock:
                    await self._fetch("schedule")
            except KeyFetchError as exc:
                log.warning(
                    "jwks_refresh_failed",
                    provider=self._provider,
                    trigger="schedule",
                    error=str(exc),
                    keys_held=bool(self._ring),
                    retry_in_s=round(delay, 1),
                )
                await asyncio.sleep(min(cap, delay * random.uniform(0.8, 1.2)))  # noqa: S311
                delay = min(delay * 2, cap)
                continue
            delay = FIRST_RETRY_DELAY_S
            await asyncio.sleep(self._refresh_interval)

    async def _discover(self) -> str:
        assert self._issuer is not None
        url = self._issuer.rstrip("/") + "/.well-known/openid-configuration"
        doc = await _get_json(self._client, url, self._fetch_deadline)
        if not isinstance(doc, dict) or not isinstance(doc.get("jwks_uri"), str):
            raise KeyFetchError("discovery document has no jwks_uri")
        if doc.get("issuer") != self._issuer:
            raise KeyFetchError("discovery document names a different issuer")
        try:
            return require_secure_url(doc["jwks_uri"])
        except ValueError as exc:
            raise KeyFetchError(f"discovery jwks_uri refused: {exc}") from None

    async def _fetch(self, trigger: str) -> None:
        attributes = {"broker.identity.provider": self._provider, "broker.keys.trigger": trigger}
        with tracing.span("identity_provider fetch_keys", **attributes):
            await self._fetch_traced(trigger)

    async def _fetch_traced(self, trigger: str) -> None:
        try:
            await self._fetch_and_build()
        except Exception as exc:
            # Any cause at all (a field of an odd type, a URL httpx cannot parse, a bug of
            # ours) is a failed fetch: logged, retried and shown by /readyz like an outage.
            failure = (
                exc
                if isinstance(exc, KeyFetchError)
                else KeyFetchError(f"unusable answer ({type(exc).__name__})")
            )
            self._last_error = str(failure)
            metrics.KEY_REFRESHES.labels(self._provider, trigger, "failed").inc()
            tracing.annotate(**{"broker.keys.outcome": "failed"})
            raise failure from None
        metrics.KEY_REFRESHES.labels(self._provider, trigger, "ok").inc()
        tracing.annotate(**{"broker.keys.outcome": "ok"})
        metrics.KEYS_LOADED_AT.labels(self._provider).set(time.time())

    async def _fetch_and_build(self) -> None:
        url = self._jwks_url or await self._discover()
        document = await _get_json(self._client, url, self._fetch_deadline)
        try:
            ring, skipped = build_key_ring(document, self._allowed)
        except ValueError as exc:
            raise KeyFetchError(str(exc)) from None
        if not ring:
            raise KeyFetchError("JWKS holds no key usable with the allowed algorithms")
        if self._configured_jwks_url is None:
            self._jwks_url = url
        # The document as published, not the kids: a key replaced under the same kid is a
        # change too. Each change gets a new generation, and tokens verified before it are
        # verified again (a counter, unlike id() of the ring, never comes back).
        digest = hashlib.sha256(json.dumps(document, sort_keys=True).encode()).digest()
        changed = digest != self._document_digest
        self._ring = ring
        self._last_error = None
        if changed:
            self._document_digest = digest
            self._generation += 1
            log.info(
                "jwks_loaded",
                provider=self._provider,
                keys=len(ring),
                skipped=skipped,
                kids=sorted(map(str, ring)),
            )


def signing_keys_for(provider: ProviderConfig, client: httpx.AsyncClient) -> SigningKeys:
    """The key source this provider's settings ask for."""
    if provider.hs256_secret is not None:
        secrets = [provider.hs256_secret.get_secret_value().encode()]
        if provider.hs256_next_secret is not None:
            secrets.append(provider.hs256_next_secret.get_secret_value().encode())
        return SharedSecretKeys(*secrets, provider=provider.label)
    return JwksKeys(provider, client)
