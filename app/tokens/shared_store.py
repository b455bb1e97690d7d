"""Sealed tokens, the mint lock and failure markers in Redis, shared by replicas."""

from __future__ import annotations

import json
import time
from dataclasses import asdict

import structlog
from redis.asyncio.lock import Lock
from redis.exceptions import LockError

from app.shared_state import SharedState
from app.tokens.cache import CachedToken
from app.tokens.sealing import CacheSealError, TokenSealer

KEY_PREFIX = "vtb:v1"

log = structlog.get_logger(logger_name=__name__)


class SharedTokenStore:
    """Sealed tokens, a mint lock and failure markers in Redis, shared by replicas."""

    def __init__(self, shared: SharedState, sealer: TokenSealer) -> None:
        self._shared = shared
        self._sealer = sealer
        self._held: dict[str, Lock] = {}  # mint locks this process holds, by cache key

    @property
    def usable(self) -> bool:
        return self._shared.available

    async def get(self, key: str) -> CachedToken | None:
        redis_key = f"{KEY_PREFIX}:tok:{key}"
        sealed = await self._shared.run(lambda: self._shared.client.get(redis_key), "GET")
        if not isinstance(sealed, bytes):
            return None
        try:
            value = CachedToken(**json.loads(self._sealer.open(sealed, redis_key.encode())))
        except (CacheSealError, ValueError, TypeError):
            return None  # tampered or from another key: mint afresh
        return value if time.time() < value.reuse_until else None

    async def put(self, key: str, value: CachedToken) -> None:
        redis_key = f"{KEY_PREFIX}:tok:{key}"
        keep_ms = int((value.reuse_until - time.time()) * 1000)
        if keep_ms <= 0:
            return
        sealed = self._sealer.seal(json.dumps(asdict(value)).encode(), redis_key.encode())
        await self._shared.run(
            lambda: self._shared.client.set(redis_key, sealed, px=keep_ms), "SET"
        )

    async def try_lock(self, key: str, hold_ms: int) -> bool | None:
        """True: we mint; False: another replica does; None: Redis unusable.

        redis-py's Lock: a random token as the value, so that only its owner releases it.
        """
        lock = self._shared.client.lock(
            f"{KEY_PREFIX}:lock:{key}",
            timeout=hold_ms / 1000,
            blocking=False,
            thread_local=False,  # one event loop thread, many owners: the token is per Lock
        )
        result = await self._shared.run(lock.acquire, "LOCK")
        if result is None and not self._shared.healthy:
            return None
        if result:
            self._held[key] = lock
        return bool(result)

    async def unlock(self, key: str) -> None:
        """Release our lock, and only ours: compare-and-delete, as one script in Redis.

        A mint that outlasted the lock's expiry may find another replica's lock under the
        same name by now; deleting that one would let a third replica mint as well."""
        lock = self._held.pop(key, None)
        if lock is None:
            return

        async def release() -> None:
            try:
                await lock.release()
            except LockError:
                log.info("mint_lock_expired_before_release")

        await self._shared.run(release, "UNLOCK")

    async def mark_failed(self, key: str, code: str, hold_ms: int = 1000) -> None:
        """Tell waiting replicas the shared call failed (kept only briefly: never cached)."""
        await self._shared.run(
            lambda: self._shared.client.set(f"{KEY_PREFIX}:fail:{key}", code.encode(), px=hold_ms),
            "SET",
        )

    async def failure(self, key: str) -> str | None:
        raw = await self._shared.run(
            lambda: self._shared.client.get(f"{KEY_PREFIX}:fail:{key}"), "GET"
        )
        # Anything may be found there; an unknown code is an upstream_error to the caller.
        return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else None

    async def locked(self, key: str) -> bool:
        exists = await self._shared.run(
            lambda: self._shared.client.exists(f"{KEY_PREFIX}:lock:{key}"), "EXISTS"
        )
        return bool(exists)
