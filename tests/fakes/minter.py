"""A VideoDB stand-in at the minter interface, for the token service's tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from app.errors import UpstreamUnavailable
from app.videodb.answers import MintedToken


class CountingMinter:
    """A VideoDB stand-in that counts calls; optionally slow or failing."""

    def __init__(
        self,
        delay: float = 0.0,
        fail: bool = False,
        granted: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.calls = 0
        self.clock = clock
        self.delay = delay
        self.fail = fail
        self.granted = granted

    async def mint(self, user_id: str, expires_in: int) -> MintedToken:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.fail:
            raise UpstreamUnavailable("down", 5)
        lifetime = self.granted if self.granted is not None else expires_in
        return MintedToken(f"st-{user_id}-{self.calls}", int(self.clock()) + lifetime)
