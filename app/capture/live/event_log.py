"""Each session's feed: a bounded, numbered log of events, and a wake-up for its readers.

In process (one replica), or in Redis (several): a stream per session whose entry ids are
the event numbers (`n-0`), appended with its counter by one script, and one pub/sub channel
on which a replica hears that a session has news. Any replica serves a feed: it replays the
stream after `Last-Event-ID` and reads on when woken.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from redis.asyncio.client import PubSub

from app.capture.live.events import FeedEvent
from app.infra.redis_state import SharedState

KEPT_EVENTS = 500  # per session: what Last-Event-ID can replay
KEPT_SESSIONS = 10_000  # in process: the logs of the sessions seen last
LOG_TTL_SECONDS = 24 * 3600
KEY_PREFIX = "vtb:v1:live"
NEWS_CHANNEL = f"{KEY_PREFIX}:news"

log = structlog.get_logger(logger_name=__name__)


class EventLog(Protocol):
    """A session's numbered events, kept up to KEPT_EVENTS; `wait` returns when there may be
    news after `last_id`, or after `patience` seconds."""

    async def append(self, session_id: str, event: str, data: dict[str, Any]) -> int | None: ...

    async def after(self, session_id: str, last_id: int) -> list[FeedEvent]: ...

    async def wait(self, session_id: str, last_id: int, patience: float) -> None: ...

    async def close(self) -> None: ...


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class _Wakeups:
    """One asyncio.Event per session with readers: set (and replaced) on news."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def event(self, session_id: str) -> asyncio.Event:
        return self._events.setdefault(session_id, asyncio.Event())

    def wake(self, session_id: str) -> None:
        event = self._events.pop(session_id, None)
        if event is not None:
            event.set()

    async def wait(self, event: asyncio.Event, patience: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(patience):
                await event.wait()


@dataclass
class _Session:
    events: deque[FeedEvent] = field(default_factory=lambda: deque(maxlen=KEPT_EVENTS))
    last: int = 0


class LocalEventLog:
    """The logs in this process: one replica serves every feed."""

    def __init__(self) -> None:
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._wakeups = _Wakeups()

    async def append(self, session_id: str, event: str, data: dict[str, Any]) -> int:
        session = self._sessions.setdefault(session_id, _Session())
        self._sessions.move_to_end(session_id)
        while len(self._sessions) > KEPT_SESSIONS:
            self._sessions.popitem(last=False)
        session.last += 1
        session.events.append(FeedEvent(session.last, event, _json(data)))
        self._wakeups.wake(session_id)
        return session.last

    async def after(self, session_id: str, last_id: int) -> list[FeedEvent]:
        session = self._sessions.get(session_id)
        return [e for e in session.events if e.id > last_id] if session else []

    async def wait(self, session_id: str, last_id: int, patience: float) -> None:
        event = self._wakeups.event(session_id)  # taken first: news after this wakes it
        if not await self.after(session_id, last_id):
            await self._wakeups.wait(event, patience)

    async def close(self) -> None:
        return None


def _log_key(session_id: str) -> str:
    """A session's stream. Its counter shares the `{session}` hash tag: the script that
    appends touches both, which a Redis Cluster allows only within one slot."""
    return f"{KEY_PREFIX}:{{{session_id}}}:log"


# KEYS: the stream, its counter. ARGV: event, data, kept, ttl, channel, session id.
_APPEND = """
local n = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[3], n .. '-0', 'e', ARGV[1], 'd', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return n
"""


class RedisEventLog:
    """The logs in Redis streams, shared by replicas; one pub/sub listener per process."""

    def __init__(self, shared: SharedState) -> None:
        self._shared = shared
        self._wakeups = _Wakeups()
        self._append = shared.client.register_script(_APPEND)
        self._listener: asyncio.Task[None] | None = None
        self._pubsub: PubSub | None = None

    def start(self) -> None:
        """Listen for news (a task that reconnects while Redis is away)."""
        self._listener = asyncio.create_task(self._listen())

    async def append(self, session_id: str, event: str, data: dict[str, Any]) -> int | None:
        keys = [_log_key(session_id), f"{KEY_PREFIX}:{{{session_id}}}:seq"]
        args: list[str | int] = [
            event,
            _json(data),
            KEPT_EVENTS,
            LOG_TTL_SECONDS,
            NEWS_CHANNEL,
            session_id,
        ]
        number = await self._shared.run(lambda: self._append(keys=keys, args=args), "XADD")
        return int(number) if number is not None else None

    async def after(self, session_id: str, last_id: int) -> list[FeedEvent]:
        key = _log_key(session_id)
        entries: Any = await self._shared.run(
            lambda: self._shared.client.xrange(key, min=f"({last_id}-0", max="+"), "XRANGE"
        )
        events = []
        for entry_id, fields in entries or []:
            try:
                number = int(entry_id.split(b"-", 1)[0])
                events.append(FeedEvent(number, fields[b"e"].decode(), fields[b"d"].decode()))
            except (ValueError, KeyError, UnicodeDecodeError):
                continue  # not written by the broker: never passed on
        return events

    async def wait(self, session_id: str, last_id: int, patience: float) -> None:
        event = self._wakeups.event(session_id)
        if not await self.after(session_id, last_id):
            await self._wakeups.wait(event, patience)

    async def _listen(self) -> None:
        while True:
            try:
                self._pubsub = self._shared.client.pubsub(ignore_subscribe_messages=True)
                await self._pubsub.subscribe(NEWS_CHANNEL)
                async for message in self._pubsub.listen():
                    data = message.get("data")
                    if isinstance(data, bytes):
                        self._wakeups.wake(data.decode("utf-8", "replace"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: readers fall back on their timeouts
                log.warning("live_news_listener_lost", error_type=type(exc).__name__)
            await asyncio.sleep(1.0)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
