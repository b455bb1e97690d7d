"""A connection's writes in one event-loop step, sent together.

uvicorn writes a response's head (status line and headers) and its body in two calls to the
transport: for a body that follows its head at once, as every response of the broker's does,
that is two `send` system calls, two TCP segments, and for the client two reads. Held until
the end of the step, they leave as one `writelines` (one `writev` under uvloop): the same
bytes, in the same order, a step later.

Nothing is held past the step: a streamed response's head still leaves before its body is
ready, and `close` sends what is held before closing. Nor is more than HOLD_AT_MOST_BYTES
held: a large body goes to the transport at once, whose buffer limits then pause the sender
as they did (uvicorn's flow control).
"""

from __future__ import annotations

import asyncio
from typing import Any

HOLD_AT_MOST_BYTES = 64 * 1024


class StepWriter:
    """The transport the protocol and its responses write through (see the module)."""

    __slots__ = ("_held", "_held_bytes", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] | None = None
        self._held_bytes = 0

    def write(self, data: bytes) -> None:
        """Hold `data` until the step ends, behind what is held already."""
        if not data:
            return
        if self._held is None:
            self._held = [data]
            self._held_bytes = len(data)
            self._loop.call_soon(self.flush)
        else:
            self._held.append(data)
            self._held_bytes += len(data)
        if self._held_bytes > HOLD_AT_MOST_BYTES:
            self.flush()  # the step's own flush then finds nothing held

    def writelines(self, lines: list[bytes]) -> None:
        """Hold each of `lines`, in order."""
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        """Send what is held now (the step's end calls this)."""
        held, self._held = self._held, None
        if not held or self._transport.is_closing():
            return
        if len(held) == 1:
            self._transport.write(held[0])
        else:
            self._transport.writelines(held)

    def close(self) -> None:
        """Send what is held, then close (the transport sends what it buffers first)."""
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        # the rest of the transport's API (get_extra_info, pause_reading, abort...) as it is
        return getattr(self._transport, name)
