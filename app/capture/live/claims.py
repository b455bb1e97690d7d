"""What must happen once across replicas, and what is counted across them.

`Claims`: the first to claim a name wins (a SET NX in Redis when shared, else this process):
a session's pipelines start once however many webhooks arrive on however many replicas.
`FeedSlots`: a user's open feeds, at most MAX_FEEDS_PER_USER (a sorted set of leases in
Redis, renewed while a feed is open, so a replica that dies frees its slots by expiry).
While Redis is down both fall back to this process.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections import OrderedDict

from app.infra.redis_state import SharedState

KEY_PREFIX = "vtb:v1:live"
KEPT_LOCAL_CLAIMS = 100_000
MAX_FEEDS_PER_USER = 5
FEED_LEASE_SECONDS = 60  # renewed at every keep-alive (15 s)


class Claims:
    """First claim of a name wins; claims last `ttl` seconds."""

    def __init__(self, shared: SharedState | None) -> None:
        self._shared = shared
        self._local: OrderedDict[str, float] = OrderedDict()

    async def claim(self, name: str, ttl: int) -> bool:
        """True for the first claim of `name` (until it expires), False for every other."""
        if self._shared is not None and self._shared.available:
            client = self._shared.client
            won = await self._shared.run(
                lambda: client.set(f"{KEY_PREFIX}:claim:{name}", b"1", nx=True, ex=ttl), "SET"
            )
            if won is not None or self._shared.healthy:
                return bool(won)
        return self._claim_here(name, ttl)

    def _claim_here(self, name: str, ttl: int) -> bool:
        now = time.monotonic()
        if self._local.get(name, 0.0) > now:
            return False
        self._local[name] = now + ttl
        self._local.move_to_end(name)
        while len(self._local) > KEPT_LOCAL_CLAIMS:
            self._local.popitem(last=False)
        return True


# KEYS: the user's leases. ARGV: now, lease end, the most, the lease's id, key ttl.
_TAKE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


class FeedSlots:
    """At most MAX_FEEDS_PER_USER open feeds per user, across replicas when shared."""

    def __init__(self, shared: SharedState | None, most: int = MAX_FEEDS_PER_USER) -> None:
        self._shared = shared
        self._most = most
        self._local: dict[str, int] = {}
        self._take = shared.client.register_script(_TAKE) if shared is not None else None

    @staticmethod
    def _key(user_id: str) -> str:
        return f"{KEY_PREFIX}:feeds:{hashlib.sha256(user_id.encode()).hexdigest()[:32]}"

    async def take(self, user_id: str) -> str | None:
        """A lease id for one more feed, or None when the user has the most open."""
        lease = uuid.uuid4().hex
        if self._shared is not None and self._take is not None and self._shared.available:
            now = time.time()
            args: list[str | int | float] = [
                now,
                now + FEED_LEASE_SECONDS,
                self._most,
                lease,
                FEED_LEASE_SECONDS * 2,
            ]
            take = self._take
            key = self._key(user_id)
            taken = await self._shared.run(lambda: take(keys=[key], args=args), "FEED_TAKE")
            if taken is not None:
                return lease if taken else None
        if self._local.get(user_id, 0) >= self._most:
            return None
        self._local[user_id] = self._local.get(user_id, 0) + 1
        return "local:" + lease

    async def renew(self, user_id: str, lease: str) -> None:
        """Keep an open feed's lease from expiring."""
        if lease.startswith("local:") or self._shared is None:
            return
        client, key = self._shared.client, self._key(user_id)
        until = time.time() + FEED_LEASE_SECONDS
        await self._shared.run(lambda: client.zadd(key, {lease: until}, xx=True), "FEED_RENEW")

    async def give_back(self, user_id: str, lease: str) -> None:
        """The feed closed: its slot is free."""
        if lease.startswith("local:"):
            left = self._local.get(user_id, 1) - 1
            if left > 0:
                self._local[user_id] = left
            else:
                self._local.pop(user_id, None)
            return
        if self._shared is not None:
            client, key = self._shared.client, self._key(user_id)
            await self._shared.run(lambda: client.zrem(key, lease), "FEED_GIVE_BACK")
