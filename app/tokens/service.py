"""A verified user and a lifetime in, a token out: reused, coalesced, or minted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import structlog

from app.errors import BrokerError, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from app.observability import metrics, tracing
from app.tokens.cache import CachedToken, LocalTokenCache, Singleflight, cache_key
from app.tokens.shared_store import SharedTokenStore
from app.videodb.answers import MintedToken

TokenSource = Literal["cache", "upstream", "coalesced"]
POLL_SECONDS = 0.02

log = structlog.get_logger(logger_name=__name__)


class Minter(Protocol):
    async def mint(self, user_id: str, expires_in: int) -> MintedToken: ...


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A token handed to a user, and where it came from."""

    minted: MintedToken
    source: TokenSource


_SHARED_FAILURES: dict[str, type[BrokerError]] = {
    "upstream_unavailable": UpstreamUnavailable,
    "upstream_timeout": UpstreamTimeout,
    "upstream_error": UpstreamError,
}


def _source(issued: IssuedToken) -> dict[str, tracing.AttributeValue]:
    return {"broker.token.source": issued.source}


def _shared_failure(code: str) -> BrokerError:
    detail = "VideoDB failed for a concurrent request of this user; try again shortly."
    if _SHARED_FAILURES.get(code) is UpstreamUnavailable:
        return UpstreamUnavailable(detail, 1)
    return _SHARED_FAILURES.get(code, UpstreamError)(detail)


class TokenService:
    """Reuses a token while half its lifetime is left; one upstream call per key at a time."""

    def __init__(
        self,
        minter: Minter,
        local: LocalTokenCache,
        shared: SharedTokenStore | None,
        upstream_name: str,
        deadline: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._minter = minter
        self._local = local
        self._shared = shared
        self._upstream = upstream_name
        self._deadline = deadline
        self._flights = Singleflight()
        self._clock = clock  # when a token was minted: the cache's clock

    async def issue(self, user_id: str, ttl: int) -> IssuedToken:
        """A token for this user and requested lifetime."""
        attributes: dict[str, tracing.AttributeValue] = {"broker.token.requested_ttl": ttl}
        return await tracing.traced("broker.token", self._issue(user_id, ttl), _source, attributes)

    async def _issue(self, user_id: str, ttl: int) -> IssuedToken:
        key = cache_key(user_id, ttl, self._upstream)
        cached = self._local.get(key)
        if cached is None and self._shared is not None:
            cached = await self._shared_hit(key)
        if cached is not None:
            return self._issued(cached, "cache")
        value, joined = await self._flights.run(key, lambda: self._mint(key, user_id, ttl))
        token, source = value
        return self._issued(token, "coalesced" if joined else source)

    def _issued(self, token: CachedToken, source: TokenSource) -> IssuedToken:
        metrics.TOKENS_BY_SOURCE[source].inc()
        return IssuedToken(MintedToken(token.token, token.expires_at), source)

    async def _mint(self, key: str, user_id: str, ttl: int) -> tuple[CachedToken, TokenSource]:
        if self._shared is None or not self._shared.usable:
            return await self._mint_here(key, user_id, ttl), "upstream"
        hold_ms = int(self._deadline * 1000) + 500
        got_lock = await self._shared.try_lock(key, hold_ms)
        if got_lock is None:  # Redis just failed: carry on alone
            return await self._mint_here(key, user_id, ttl), "upstream"
        if got_lock:
            try:
                # Another replica may have finished between our miss and our lock.
                found = await self._shared_hit(key)
                if found is not None:
                    return found, "coalesced"
                token = await self._mint_here(key, user_id, ttl)
            except BrokerError as exc:
                await self._shared.mark_failed(key, exc.code)
                raise
            finally:
                await self._shared.unlock(key)
            return token, "upstream"
        return await self._wait_for_other_replica(key, user_id, ttl)

    async def _wait_for_other_replica(
        self, key: str, user_id: str, ttl: int
    ) -> tuple[CachedToken, TokenSource]:
        assert self._shared is not None
        ends_at = time.monotonic() + self._deadline + 0.5
        while time.monotonic() < ends_at:
            await asyncio.sleep(POLL_SECONDS)
            found = await self._shared_hit(key)
            if found is not None:
                return found, "coalesced"
            code = await self._shared.failure(key)
            if code is not None:
                raise _shared_failure(code)
            if not self._shared.usable or not await self._shared.locked(key):
                break  # the other replica finished, vanished, or Redis did
        # The lock may have gone because the token just landed: look once more.
        found = await self._shared_hit(key)
        if found is not None:
            return found, "coalesced"
        return await self._mint_here(key, user_id, ttl), "upstream"

    async def _shared_hit(self, key: str) -> CachedToken | None:
        assert self._shared is not None
        found = await self._shared.get(key)
        if found is not None:
            self._local.put(key, found)
        return found

    async def _mint_here(self, key: str, user_id: str, ttl: int) -> CachedToken:
        minted_at = self._clock()
        minted = await self._minter.mint(user_id, ttl)
        token = CachedToken(minted.token, minted.expires_at, minted_at)
        self._local.put(key, token)
        if self._shared is not None:
            await self._shared.put(key, token)
        return token
