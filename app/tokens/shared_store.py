"""Sealed tokens, the mint lock and failure markers in Redis, shared by replicas."""

from __future__ import annotations

import json
import time
from dataclasses import asdict

import structlog
from redis.asyncio.lock import Lock
from redis.exceptions import LockError

from app.infra.redis_state import SharedState
from app.tokens.cache import CachedToken
from app.tokens.sealing import CacheSealError, SealingKey, TokenSealer

KEY_PREFIX = "vtb:v1"
FAILURE_HOLD_MS = 1000  # a failure marker's life: long enough for the waiters to see it

# Whoever can write to Redis can plant a mint lock or a failure marker the broker never set
# (docs/security.md). Ours always expire within their lifetime; one that would outlive it (no
# expiry, or a later one) is cut to that lifetime the first time a replica meets it, so a
# planted marker costs at most one lifetime, then the broker mints. Returns the key's PTTL as
# found: -2 no key, -1 no expiry, else milliseconds.
_CAP_EXPIRY = """
local left = redis.call('PTTL', KEYS[1])
if left == -1 or left > tonumber(ARGV[1]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return left
"""

log = structlog.get_logger(logger_name=__name__)


def token_key(sealing_key: SealingKey, key: str) -> str:
    """Where a token sealed under this key is kept: the name says which key sealed it, so
    pods holding different keys (a rollout) never overwrite each other's entries."""
    return f"{KEY_PREFIX}:tok:{sealing_key.key_id}:{key}"


class SharedTokenStore:
    """Sealed tokens, a mint lock and failure markers in Redis, shared by replicas."""

    def __init__(self, shared: SharedState, sealer: TokenSealer) -> None:
        self._shared = shared
        self._sealer = sealer
        self._held: dict[str, Lock] = {}  # mint locks this process holds, by cache key
        self._cap_expiry = shared.client.register_script(_CAP_EXPIRY)

    @property
    def usable(self) -> bool:
        return self._shared.available

    async def get(self, key: str) -> CachedToken | None:
        """The token sealed under the current key, else under the previous one (a rollout
        of a new key: what the old pods cached is reused, not minted again)."""
        for sealing_key in self._sealer.keys:
            found = await self._get_sealed(key, sealing_key)
            if found is not None:
                return found
        return None

    async def _get_sealed(self, key: str, sealing_key: SealingKey) -> CachedToken | None:
        redis_key = token_key(sealing_key, key)
        sealed = await self._shared.run(lambda: self._shared.client.get(redis_key), "GET")
        if not isinstance(sealed, bytes):
            return None
        try:
            opened = self._sealer.open(sealed, redis_key.encode(), sealing_key)
            value = CachedToken(**json.loads(opened))
        except (CacheSealError, ValueError, TypeError):
            return None  # tampered, or planted: mint afresh
        return value if time.time() < value.reuse_until else None

    async def put(self, key: str, value: CachedToken) -> None:
        redis_key = token_key(self._sealer.current, key)
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
        else:
            await self._cap(f"{KEY_PREFIX}:lock:{key}", hold_ms, "mint_lock")
        return bool(result)

    async def _cap(self, redis_key: str, lifetime_ms: int, kind: str) -> None:
        """Cut a marker that would outlive `lifetime_ms` (not one of ours) to that lifetime."""
        found = await self._shared.run(
            lambda: self._cap_expiry(keys=[redis_key], args=[lifetime_ms]), "CAP_EXPIRY"
        )
        if isinstance(found, int) and (found == -1 or found > lifetime_ms):
            # Not one the broker set: someone else writes to Redis (docs/security.md).
            log.warning(
                "redis_marker_capped",
                kind=kind,
                expiry_ms=found,
                capped_to_ms=lifetime_ms,
                effect="a marker the broker did not set; it expires within its lifetime",
            )

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

    async def mark_failed(self, key: str, code: str, hold_ms: int = FAILURE_HOLD_MS) -> None:
        """Tell waiting replicas the shared call failed (kept only briefly: never cached)."""
        await self._shared.run(
            lambda: self._shared.client.set(f"{KEY_PREFIX}:fail:{key}", code.encode(), px=hold_ms),
            "SET",
        )

    async def failure(self, key: str) -> str | None:
        redis_key = f"{KEY_PREFIX}:fail:{key}"
        raw = await self._shared.run(lambda: self._shared.client.get(redis_key), "GET")
        if not isinstance(raw, bytes):
            return None
        await self._cap(redis_key, FAILURE_HOLD_MS, "failure_marker")
        # Anything may be found there; an unknown code is an upstream_error to the caller.
        return raw.decode("utf-8", "replace")

    async def locked(self, key: str) -> bool:
        exists = await self._shared.run(
            lambda: self._shared.client.exists(f"{KEY_PREFIX}:lock:{key}"), "EXISTS"
        )
        return bool(exists)
