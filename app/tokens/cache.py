"""Token reuse and coalescing in this process: the bounded cache and single-flight calls."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar, cast

from cachetools import TLRUCache

from app.observability import metrics

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class CachedToken:
    """A token as kept for reuse."""

    token: str = field(repr=False)  # never shown
    expires_at: int
    minted_at: float

    @property
    def reuse_until(self) -> float:
        """Reusable while at least half of its lifetime is left."""
        return self.expires_at - (self.expires_at - self.minted_at) / 2


def cache_key(user_id: str, ttl: int, upstream: str) -> str:
    """Every parameter that changes the minted token, hashed (no user id in Redis keys).

    NUL cannot occur in a user id (app/identity/authenticator.py accepts printable ids only)
    nor in a URL, so the joined material is unambiguous.
    """
    material = f"{user_id}\x00{ttl}\x00{upstream}"
    return hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest()[:40]


class LocalTokenCache:
    """A bounded, time-aware LRU of tokens in this process."""

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock  # wall time: tokens expire at VideoDB's epoch seconds
        self._entries: TLRUCache[str, CachedToken] | None = (
            TLRUCache(maxsize=max_entries, ttu=lambda _k, v, _now: v.reuse_until, timer=clock)
            if max_entries > 0
            else None
        )

    def get(self, key: str) -> CachedToken | None:
        if self._entries is None:
            return None
        try:  # cachetools' get() asks the timer twice, through its wrapper: 3-4x this
            found = self._entries[key]
        except KeyError:  # never there, or past its reuse
            return None
        return found if self._clock() < found.reuse_until else None

    def put(self, key: str, value: CachedToken) -> None:
        if self._entries is None or self._clock() >= value.reuse_until:
            return
        self._entries[key] = value
        metrics.CACHE_ENTRIES.set(len(self._entries))

    def __len__(self) -> int:
        return 0 if self._entries is None else len(self._entries)


class Singleflight:
    """Concurrent calls with the same key share one execution, its result or its error."""

    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Future[object]] = {}

    async def run(self, key: str, work: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """(result, shared): shared is True for callers that joined someone else's flight."""
        flight = self._flights.get(key)
        if flight is not None:
            return cast(T, await asyncio.shield(flight)), True
        flight = asyncio.get_running_loop().create_future()
        self._flights[key] = flight
        try:
            result = await work()
        except BaseException as exc:
            flight.set_exception(exc)
            flight.exception()  # mark retrieved: nobody else may be waiting
            raise
        else:
            flight.set_result(result)
            return result, False
        finally:
            del self._flights[key]
