"""The app factory and its lifespan, as a process that starts many apps sees them."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any


async def test_start_up_objects_are_frozen_once_per_process(
    app_client: Callable[..., Any],
) -> None:
    """Frozen objects are never collected: freezing at every app start pinned every earlier
    app's leftovers (a suite's loops, clients and sockets) for the life of the process."""
    await app_client()
    after_first = gc.get_freeze_count()
    assert after_first > 0
    for _ in range(3):
        await app_client()
    assert gc.get_freeze_count() <= after_first  # refcounting still frees some of them
